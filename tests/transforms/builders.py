"""Small fp32 models built with onnx.helper for the transform tests, and a runner."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """First output of ``model`` in onnxruntime (a bare array feeds the first input)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    if isinstance(feeds, np.ndarray):
        feeds = {sess.get_inputs()[0].name: feeds}
    return sess.run(None, feeds)[0]


def init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def model_of(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    in_shape: list,
    out_shape: list,
    out_name: str = "y",
    opset: int = 13,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def spread(rng: np.random.Generator, shape: tuple, axis: int, decades: float = 3.0) -> np.ndarray:
    """Random weights whose per-channel ranges (along ``axis``) span ``decades`` powers of 10."""
    w = rng.standard_normal(shape)
    scale_shape = [1] * len(shape)
    scale_shape[axis] = shape[axis]
    scales = 10.0 ** rng.uniform(-decades / 2, decades / 2, shape[axis])
    return (w * scales.reshape(scale_shape)).astype(np.float32)


def mobile_block(rng: np.random.Generator, act: str = "Relu") -> onnx.ModelProto:
    """x[N,4,8,8] -> 1x1 Conv 4->12, act -> depthwise 3x3 (group 12), act -> 1x1 Conv 12->6
    -> act -> MaxPool 2 -> Conv 6->6 group 2 -> act -> GlobalAveragePool -> Flatten
    -> Gemm 6->5 (transB), Relu -> Gemm 5->3 (transB 0) -> y.

    ``act``: "Relu" or "Relu6" (Clip with initializer bounds 0 and 6).
    """
    nodes: list[onnx.NodeProto] = []
    inits = [init("lo", np.array(0.0)), init("hi", np.array(6.0))]

    def activation(src: str, dst: str) -> None:
        if act == "Relu":
            nodes.append(helper.make_node("Relu", [src], [dst], name=f"act_{dst}"))
        else:
            nodes.append(helper.make_node("Clip", [src, "lo", "hi"], [dst], name=f"act_{dst}"))

    def conv(name: str, src: str, w: np.ndarray, group: int = 1, pad: int = 0) -> str:
        inits.extend([init(f"{name}.w", w), init(f"{name}.b", rng.standard_normal(w.shape[0]))])
        nodes.append(
            helper.make_node(
                "Conv",
                [src, f"{name}.w", f"{name}.b"],
                [f"{name}.y"],
                name=name,
                group=group,
                pads=[pad] * 4,
            )
        )
        return f"{name}.y"

    t = conv("expand", "x", spread(rng, (12, 4, 1, 1), 0))
    activation(t, "a1")
    t = conv("dw", "a1", spread(rng, (12, 1, 3, 3), 0), group=12, pad=1)
    activation(t, "a2")
    t = conv("project", "a2", spread(rng, (6, 12, 1, 1), 1))
    activation(t, "a3")
    nodes.append(helper.make_node("MaxPool", ["a3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]))
    t = conv("grouped", "p", spread(rng, (6, 3, 3, 3), 0), group=2, pad=1)
    activation(t, "a4")
    nodes.append(helper.make_node("GlobalAveragePool", ["a4"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    inits.extend([init("fc1.w", spread(rng, (5, 6), 1)), init("fc1.b", rng.standard_normal(5))])
    nodes.append(helper.make_node("Gemm", ["flat", "fc1.w", "fc1.b"], ["h"], name="fc1", transB=1))
    nodes.append(helper.make_node("Relu", ["h"], ["hr"]))
    inits.extend([init("fc2.w", spread(rng, (5, 3), 0)), init("fc2.b", rng.standard_normal(3))])
    nodes.append(helper.make_node("Gemm", ["hr", "fc2.w", "fc2.b"], ["y"], name="fc2"))
    return model_of(nodes, inits, ["N", 4, 8, 8], ["N", 3])
