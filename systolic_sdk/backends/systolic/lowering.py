"""Standard-ONNX lowering of a Systolic graph, for comparison in stock onnxruntime.

- QLinearConv ``relu=1`` -> QLinearConv + int8 Clip(0, 127) (spec 2.5: ReLU after
  rounding and saturation);
- QLinearRelu -> int8 Clip(0, 127);
- com.microsoft QLinearAdd (the accelerator's rule, spec section 4) -> per input
  ``QuantizeLinear(f32(a) * f32(s_a / s_c), 1, 0)`` (sat8(rne(.)) of a float32 product),
  the sum of the two int8 values in float (exact), QuantizeLinear(., 1, 0) (saturation),
  and Clip(0, 127) when ``relu=1``;
- QLinearConv_nhwc -> Transpose to NCHW, QLinearConv (OIHW weights), Clip(0, 127) when
  ``relu=1``, MaxPool when ``maxpool=1``, Transpose back to NHWC. A fused pool follows
  the runtime (spec section 3): on the accelerator conv path the pool pads are
  ``pool_pads[0]`` on all four sides and count as 0, so without a ReLU a padded pool is
  ``Pad(0)`` + MaxPool; on the fallback path it is an ONNX MaxPool (padding excluded).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from runtime_emulator.kernels.qlinear_conv_nhwc import conv_path
from systolic_sdk.backends.systolic.passes import MS_DOMAIN, sync_domains
from systolic_sdk.errors import SdkError
from systolic_sdk.graph.util import NameScope, drop_unused

F32 = np.float32


def lower_systolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The standard-ONNX equivalent of a Systolic-backend model (a new model)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = NameScope(graph)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []

    def const(base: str, value: np.ndarray) -> str:
        name = names.fresh(base)
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def relu_clip(x: str, y: str, base: str) -> onnx.NodeProto:
        lo = const(f"{base}_relu_min", np.array(0, np.int8))
        hi = const(f"{base}_relu_max", np.array(127, np.int8))
        return helper.make_node("Clip", [x, lo, hi], [y], name=names.fresh(f"{base}_relu"))

    nodes: list[onnx.NodeProto] = []
    pools: list[tuple[onnx.NodeProto, onnx.NodeProto, str, tuple, bool]] = []
    for node in graph.node:
        relu = any(a.name == "relu" and a.i for a in node.attribute)
        if node.op_type == "QLinearRelu" and node.domain in ("", SYSTOLIC_DOMAIN):
            nodes.append(relu_clip(node.input[0], node.output[0], node.name))
        elif node.op_type == "QLinearConv" and node.domain in ("", "ai.onnx"):
            conv = onnx.NodeProto()
            conv.CopyFrom(node)
            kept = [a for a in conv.attribute if a.name != "relu"]
            del conv.attribute[:]
            conv.attribute.extend(kept)
            if relu:
                mid = names.fresh(f"{node.output[0]}_before_relu")
                conv.output[0] = mid
                nodes += [conv, relu_clip(mid, node.output[0], node.name)]
            else:
                nodes.append(conv)
        elif node.op_type == "QLinearConv_nhwc" and node.domain in ("", SYSTOLIC_DOMAIN):
            nodes += _lower_conv_nhwc(node, relu, inits, const, relu_clip, names, pools)
        elif node.op_type == "QLinearAdd" and node.domain == MS_DOMAIN:
            nodes += _lower_add(node, relu, inits, const, names)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    if pools:
        before = len(new_inits)
        _resolve_pools(out, pools, const, names)
        graph.initializer.extend(new_inits[before:])
    drop_unused(graph)  # the HWIO weights of lowered QLinearConv_nhwc nodes
    return sync_domains(out)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


POOL_ATTRS = ("maxpool", "relu") + tuple(
    f"pool_{k}"
    for k in (
        "kernel_shape",
        "pads",
        "strides",
        "auto_pad",
        "ceil_mode",
        "dilations",
        "storage_order",
    )
)


def _lower_conv_nhwc(node, relu, inits, const, relu_clip, names, pools) -> list[onnx.NodeProto]:
    a = _attrs(node)
    w = node.input[3]
    if w not in inits or np.asarray(inits[w]).ndim != 4:
        raise SdkError(f"node '{node.name}': QLinearConv_nhwc weight '{w}' is not a 4-D constant")
    hwio = np.asarray(inits[w])
    base = node.name or node.output[0]
    x = names.fresh(f"{base}_x_nchw")
    nodes = [
        helper.make_node(
            "Transpose",
            [node.input[0]],
            [x],
            name=names.fresh(f"{base}_to_nchw"),
            perm=[0, 3, 1, 2],
        )
    ]
    inputs = list(node.input)
    inputs[0] = x
    inputs[3] = const(f"{w}_oihw", np.ascontiguousarray(hwio.transpose(3, 2, 0, 1)))
    y = names.fresh(f"{base}_conv_nchw")
    conv = helper.make_node("QLinearConv", inputs, [y], name=names.fresh(base))
    conv.attribute.extend(t for t in node.attribute if t.name not in POOL_ATTRS)
    nodes.append(conv)
    if relu:
        r = names.fresh(f"{base}_relu_nchw")
        nodes.append(relu_clip(y, r, base))
        y = r
    if int(a.get("maxpool", 0)):
        p = names.fresh(f"{base}_pool_nchw")
        pool = helper.make_node(
            "MaxPool",
            [y],
            [p],
            name=names.fresh(f"{base}_pool"),
            kernel_shape=list(a["pool_kernel_shape"]),
            strides=list(a.get("pool_strides", [1, 1])),
            pads=list(a.get("pool_pads", [0, 0, 0, 0])),
        )
        pools.append((pool, conv, x, tuple(hwio.shape), bool(relu)))
        nodes.append(pool)
        y = p
    nodes.append(
        helper.make_node(
            "Transpose",
            [y],
            [node.output[0]],
            name=names.fresh(f"{base}_to_nhwc"),
            perm=[0, 2, 3, 1],
        )
    )
    return nodes


def _resolve_pools(model, pools, const, names) -> None:
    """Give each fused pool the padding rule of the runtime's conv path (spec section 3)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    graph = model.graph
    live = {n.name: n for n in graph.node}  # graph.node holds copies of the built nodes
    for built, conv, x, w_shape, relu in pools:
        pool = live[built.name]
        shape = shapes.get(x)
        if shape is None or len(shape) != 4 or None in shape[2:]:
            raise SdkError(
                f"node '{conv.name}': the spatial shape of the conv input is unknown; the "
                "fused pool's padding rule depends on it"
            )
        attrs = {**_attrs(conv), "maxpool": 1}
        pa = _attrs(pool)
        attrs.update(
            pool_kernel_shape=pa["kernel_shape"], pool_strides=pa["strides"], pool_pads=pa["pads"]
        )
        x_nhwc = (shape[0], shape[2], shape[3], shape[1])
        if conv_path(attrs, x_nhwc, w_shape) != "accelerator":
            continue
        pad = int(pa["pads"][0])
        uniform = [pad] * 4
        if relu or pad == 0:
            _set_ints(pool, "pads", uniform)
            continue
        padded = names.fresh(f"{pool.input[0]}_padded")
        pads = const(
            f"{pool.name}_pad_amounts", np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64)
        )
        zero = const(f"{pool.name}_pad_value", np.array(0, np.int8))
        pad_node = helper.make_node(
            "Pad", [pool.input[0], pads, zero], [padded], name=names.fresh(f"{pool.name}_pad")
        )
        pool.input[0] = padded
        _set_ints(pool, "pads", [0, 0, 0, 0])
        k = next(i for i, n in enumerate(graph.node) if n.name == pool.name)
        graph.node.insert(k, pad_node)


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    kept = [t for t in node.attribute if t.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute(name, values))


def _lower_add(node, relu, inits, const, names) -> list[onnx.NodeProto]:
    def scalar(i: int) -> np.ndarray:
        name = node.input[i]
        if name not in inits:
            raise SdkError(f"node '{node.name}': QLinearAdd input {i} ('{name}') is not constant")
        return np.asarray(inits[name]).reshape(())

    s_a, s_b, s_c = (scalar(i).astype(F32) for i in (1, 4, 6))
    for i in (2, 5, 7):
        if len(node.input) > i and node.input[i] and scalar(i) != 0:
            raise SdkError(
                f"node '{node.name}': QLinearAdd zero point '{node.input[i]}' is not 0 "
                "(the Systolic rule is symmetric)"
            )
    one = const(f"{node.name}_unit_scale", np.array(1.0, F32))
    zero = const(f"{node.name}_zero", np.array(0, np.int8))
    nodes, terms = [], []
    for xi, s in ((0, s_a), (3, s_b)):
        base = f"{node.name}_in{xi // 3}"
        f = names.fresh(f"{base}_float")
        nodes.append(helper.make_node("Cast", [node.input[xi]], [f], to=TensorProto.FLOAT))
        m = const(f"{base}_multiplier", np.divide(s, s_c, dtype=F32))
        p = names.fresh(f"{base}_scaled")
        nodes.append(helper.make_node("Mul", [f, m], [p]))
        q = names.fresh(f"{base}_int8")
        nodes.append(helper.make_node("QuantizeLinear", [p, one, zero], [q]))
        t = names.fresh(f"{base}_value")
        nodes.append(helper.make_node("Cast", [q], [t], to=TensorProto.FLOAT))
        terms.append(t)
    total = names.fresh(f"{node.name}_sum")
    nodes.append(helper.make_node("Add", terms, [total]))
    y = node.output[0]
    sat = names.fresh(f"{y}_saturated") if relu else y
    nodes.append(helper.make_node("QuantizeLinear", [total, one, zero], [sat], name=node.name))
    if relu:
        lo = const(f"{node.name}_relu_min", np.array(0, np.int8))
        hi = const(f"{node.name}_relu_max", np.array(127, np.int8))
        nodes.append(helper.make_node("Clip", [sat, lo, hi], [y]))
    for n in nodes:
        if not n.name:
            n.name = names.fresh(f"{node.name}_{n.op_type}")
    return nodes
