"""Small float graphs (one per rule) used by the walk and rule tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from qtest_helpers import make_model

RNG = np.random.default_rng(0)


def _w(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def conv(name: str, x: str, y: str, cin: int, cout: int, inits: dict, group: int = 1):
    inits[f"{name}_w"] = _w(cout, cin // group, 3, 3)
    inits[f"{name}_b"] = _w(cout, scale=0.1)
    return helper.make_node(
        "Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, pads=[1, 1, 1, 1], group=group
    )


def chain_conv_relu_conv():
    inits: dict = {}
    nodes = [
        conv("c1", "x", "a", 3, 4, inits),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        conv("c2", "r", "y", 4, 2, inits),
    ]
    return make_model(nodes, [("x", [2, 3, 6, 6])], ["y"], inits)


def single_op(kind: str):
    """A conv producing an activation, then the op under test (where it needs one)."""
    inits: dict = {}
    x = [("x", [2, 3, 6, 6])]
    head = [conv("c0", "x", "h", 3, 4, inits)]
    if kind == "conv":
        nodes = [conv("c", "x", "y", 3, 4, inits)]
    elif kind == "conv_depthwise":
        nodes = head + [conv("dw", "h", "y", 4, 4, inits, group=4)]
    elif kind == "matmul_const":
        inits["w"] = _w(6, 5)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    elif kind == "matmul_act":
        nodes = head + [helper.make_node("MatMul", ["h", "h"], ["y"], name="mm")]
    elif kind in ("gemm", "gemm_transb"):
        trans = kind == "gemm_transb"
        inits["w"] = _w(5, 6) if trans else _w(6, 5)
        inits["b"] = _w(5, scale=0.2)
        nodes = [helper.make_node("Gemm", ["x2", "w", "b"], ["y"], name="gemm", transB=int(trans))]
        x = [("x2", [3, 6])]
    elif kind in ("relu", "clip"):
        if kind == "relu":
            act = helper.make_node("Relu", ["h"], ["y"], name="act")
        else:
            inits["lo"] = np.array(-0.2, np.float32)
            inits["hi"] = np.array(0.6, np.float32)
            act = helper.make_node("Clip", ["h", "lo", "hi"], ["y"], name="act")
        # a second reader keeps the producer's range wide, so the op cannot be dropped
        nodes = head + [act, helper.make_node("Neg", ["h"], ["n"], name="neg")]
        return make_model(nodes, x, ["y", "n"], inits)
    elif kind == "maxpool":
        nodes = head + [helper.make_node("MaxPool", ["h"], ["y"], name="p", kernel_shape=[2, 2])]
    elif kind == "averagepool":
        nodes = head + [
            helper.make_node("AveragePool", ["h"], ["y"], name="p", kernel_shape=[2, 2])
        ]
    elif kind == "globalaveragepool":
        nodes = head + [helper.make_node("GlobalAveragePool", ["h"], ["y"], name="p")]
    elif kind in ("add", "mul"):
        inits["k"] = _w(4, 1, 1, scale=0.5)
        op = kind.capitalize()
        nodes = head + [
            conv("c1", "x", "h1", 3, 4, inits),
            helper.make_node(op, ["h", "h1"], ["t"], name="bin"),
            helper.make_node(op, ["t", "k"], ["y"], name="bin_const"),
        ]
    elif kind == "concat":
        nodes = head + [
            conv("c1", "x", "h1", 3, 2, inits),
            helper.make_node("Concat", ["h", "h1"], ["y"], name="cat", axis=1),
        ]
    elif kind == "reshape":
        inits["shape"] = np.array([2, -1], np.int64)
        nodes = head + [helper.make_node("Reshape", ["h", "shape"], ["y"], name="op")]
    elif kind == "flatten":
        nodes = head + [helper.make_node("Flatten", ["h"], ["y"], name="op")]
    elif kind == "transpose":
        nodes = head + [helper.make_node("Transpose", ["h"], ["y"], name="op", perm=[0, 2, 3, 1])]
    elif kind == "squeeze":
        inits["ax"] = np.array([1], np.int64)
        nodes = head + [
            conv("c1", "x", "h1", 3, 1, inits),
            helper.make_node("Squeeze", ["h1", "ax"], ["y"], name="op"),
        ]
        nodes = nodes[1:]
    elif kind == "unsqueeze":
        inits["ax"] = np.array([0], np.int64)
        nodes = head + [helper.make_node("Unsqueeze", ["h", "ax"], ["y"], name="op")]
    else:
        raise ValueError(kind)
    return make_model(nodes, x, ["y"], inits)


def quantize_minmax(model: onnx.ModelProto, ranges=None, **kw) -> onnx.ModelProto:
    """quantize_model with ``QuantConfig(**kw)`` and ``ranges``, by default the min/max
    over :func:`feeds_for` of the tensors the config needs."""
    from qtest_helpers import minmax_ranges

    from systolic_sdk.quantization import QuantConfig, quantize_model, tensors_to_calibrate

    cfg = QuantConfig(**kw)
    names = tensors_to_calibrate(model, cfg)
    if ranges is None and names:
        ranges = minmax_ranges(model, feeds_for(model), names)
    return quantize_model(model, cfg, ranges)


def feeds_for(model, n: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    for inp in model.graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds
