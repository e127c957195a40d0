"""Per-layer golden vectors of a Systolic graph: run it on the emulator, recompute each
accelerator layer's int32 accumulators with the datapath helpers, and check that
requantizing them reproduces the recorded output exactly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from runtime_emulator import datapath as dp
from runtime_emulator import ort_engine
from runtime_emulator.array import ACCEL_OPS
from runtime_emulator.executor import Executor, resolve_target
from runtime_emulator.kernels import KernelContext
from runtime_emulator.kernels.qlinear_conv import conv_integer_core
from systolic_sdk.errors import SdkError

#: Layer kinds exported: the array's matmul-like ops and the Systolic QLinearAdd.
LAYER_OPS = (*ACCEL_OPS, "QLinearAdd")
#: Order of the K axis of a conv's im2col weight matrix (slowest first).
IM2COL_K_ORDER = ("c", "kh", "kw")
#: The same for QLinearConv_nhwc (HWIO weights, NHWC activations).
NHWC_K_ORDER = ("kh", "kw", "c")


class VectorError(SdkError):
    """A model or layer cannot be exported as golden vectors."""


@dataclass
class LayerVectors:
    """One layer's vectors: named arrays (export order), scalar parameters, attributes."""

    index: int
    name: str
    op: str
    attributes: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, np.float32] = field(default_factory=dict)
    layouts: dict[str, str] = field(default_factory=dict)
    relu: bool = False


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (int, float, str)):
        return v
    raise VectorError(f"attribute value of type {type(v).__name__} cannot be exported")


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: _json_value(onnx.helper.get_attribute_value(a)) for a in node.attribute}


def _scalar(v: np.ndarray) -> np.float32:
    return np.float32(np.asarray(v, dtype=np.float32).reshape(()))


def _check_same(name: str, what: str, got: np.ndarray, recorded: np.ndarray) -> None:
    if (
        got.shape != recorded.shape
        or got.dtype != recorded.dtype
        or not np.array_equal(got, recorded)
    ):
        raise VectorError(
            f"layer '{name}': {what} does not reproduce the emulator's output; "
            "refusing to export inconsistent vectors"
        )


def im2col_weights(w: np.ndarray, group: int) -> np.ndarray:
    """An OIHW weight tensor as the array's im2col GEMM operand: ``[K, J]`` for one group
    (``[group, K, J]`` otherwise), ``K = C/group * kh * kw`` ordered (c, kh, kw), kw
    fastest, and ``J`` the group's output channels."""
    m = w.shape[0]
    k = int(np.prod(w.shape[1:]))
    mat = w.reshape(group, m // group, k).transpose(0, 2, 1)
    mat = np.ascontiguousarray(mat)
    return mat[0] if group == 1 else mat


def hwio_weights(w: np.ndarray, group: int) -> np.ndarray:
    """An HWIO weight tensor (QLinearConv_nhwc) as the array's GEMM operand: ``[K, J]``
    (``[group, K, J]`` when grouped), ``K = kh * kw * C/group`` ordered (kh, kw, c)."""
    kh, kw, cg, m = w.shape
    mat = w.reshape(kh * kw * cg, group, m // group).transpose(1, 0, 2)
    mat = np.ascontiguousarray(mat)
    return mat[0] if group == 1 else mat


def _conv_layer(rec: Any, ctx: KernelContext, nhwc: bool) -> LayerVectors:
    node = rec.node
    names = list(node.input) + [""] * (9 - len(node.input))
    ins = [rec.inputs.get(n) if n else None for n in names]
    x, s_x, x_zp, w, s_w, w_zp, s_y, y_zp, bias = ins
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if nhwc and int(attrs.get("maxpool", 0)):
        raise VectorError(
            f"layer '{rec.name}': QLinearConv_nhwc with fused max pooling is not exported "
            "(its output is pooled, the accumulators are not)"
        )
    y = rec.outputs[node.output[0]]
    x_nchw = np.moveaxis(x, -1, 1) if nhwc else x
    w_oihw = np.moveaxis(w, (-1, -2), (0, 1)) if nhwc else w
    x_zp = np.zeros((), np.int8) if x_zp is None else x_zp.reshape(())
    w_zp = np.zeros((), np.int8) if w_zp is None else w_zp.reshape(-1)
    y_zp = np.zeros((), y.dtype) if y_zp is None else y_zp.reshape(())
    if np.any(x_zp) or np.any(w_zp) or np.any(y_zp) or x.dtype != np.int8:
        raise VectorError(f"layer '{rec.name}': the array takes int8 with zero points 0")
    conv_keys = ("auto_pad", "kernel_shape", "dilations", "strides", "pads", "group")
    conv_attrs = {k: v for k, v in attrs.items() if k in conv_keys}
    acc = conv_integer_core(x_nchw, x_zp, w_oihw, w_zp, conv_attrs, ctx, bias)
    mult = dp.requant_multiplier(s_x.reshape(()), s_w.reshape(()), s_y.reshape(()))
    relu = bool(attrs.get("relu", 0))
    if nhwc:
        acc = np.ascontiguousarray(np.moveaxis(acc, 1, -1))
    _check_same(rec.name, "requantize(acc, M)", dp.requantize(acc, mult, y.dtype, 0, relu), y)
    group = int(attrs.get("group", 1))
    if bias is None:
        bias = np.zeros(w_oihw.shape[0], np.int32)
    lv = LayerVectors(rec.index, rec.name, rec.op_type, _attributes(node), relu=relu)
    order = NHWC_K_ORDER if nhwc else IM2COL_K_ORDER
    original = "weights_hwio" if nhwc else "weights_oihw"
    lv.arrays = {
        "input": x,
        "weights": hwio_weights(w, group) if nhwc else im2col_weights(w_oihw, group),
        original: np.ascontiguousarray(w),
        "bias": np.asarray(bias, np.int32),
        "acc": acc,
        "output": y,
    }
    act = "NHWC" if nhwc else "NCHW"
    lv.layouts = {
        "input": act,
        "weights": ("K x J" if group == 1 else "G x K x J")
        + f", K = C/group*kh*kw ordered ({', '.join(order)}), {order[-1]} fastest; "
        "J = output channels of the group",
        original: "HWIO (the QLinearConv_nhwc weight)" if nhwc else "OIHW (the ONNX weight)",
        "bias": "per output channel",
        "acc": act,
        "output": act,
    }
    lv.scalars = {"multiplier": _scalar(mult), "x_scale": _scalar(s_x), "w_scale": _scalar(s_w),
                  "y_scale": _scalar(s_y)}  # fmt: skip
    return lv


def _matmul_layer(rec: Any) -> LayerVectors:
    node = rec.node
    a, s_a, a_zp, b, s_b, b_zp, s_y, y_zp = (rec.inputs.get(n) if n else None for n in node.input)
    y = rec.outputs[node.output[0]]
    for zp in (a_zp, b_zp, y_zp):
        if zp is not None and np.any(zp):
            raise VectorError(f"layer '{rec.name}': the array takes zero points 0")
    if a.ndim < 2 or b.ndim < 2:
        raise VectorError(f"layer '{rec.name}': 1-D matmul operands are not exported")
    acc = dp.int_matmul_wrap32(a, b)
    mult = dp.requant_multiplier(s_a.reshape(()), s_b.reshape(()), s_y.reshape(()))
    _check_same(rec.name, "requantize(acc, M)", dp.requantize(acc, mult, y.dtype), y)
    lv = LayerVectors(rec.index, rec.name, rec.op_type, _attributes(node))
    lv.arrays = {"input": a, "weights": b, "bias": np.zeros(b.shape[-1], np.int32), "acc": acc,
                 "output": y}  # fmt: skip
    lv.layouts = {"input": "[..., I, K]", "weights": "[..., K, J]", "bias": "zeros (no bias)",
                  "acc": "[..., I, J]", "output": "[..., I, J]"}  # fmt: skip
    lv.scalars = {"multiplier": _scalar(mult), "x_scale": _scalar(s_a), "w_scale": _scalar(s_b),
                  "y_scale": _scalar(s_y)}  # fmt: skip
    return lv


def _add_layer(rec: Any) -> LayerVectors:
    node = rec.node
    names = list(node.input) + [""] * (8 - len(node.input))
    a, s_a, _, b, s_b, _, s_c, _ = (rec.inputs.get(n) if n else None for n in names)
    y = rec.outputs[node.output[0]]
    attrs = {a_.name: onnx.helper.get_attribute_value(a_) for a_ in node.attribute}
    relu = bool(attrs.get("relu", 0))
    got = dp.qlinear_add_systolic(a, s_a.reshape(()), b, s_b.reshape(()), s_c.reshape(()), relu)
    _check_same(rec.name, "the Systolic QLinearAdd", got, y)
    lv = LayerVectors(rec.index, rec.name, rec.op_type, _attributes(node), relu=relu)
    a2 = dp.rescale_saturate(a, s_a.reshape(()), s_c.reshape(()))
    b2 = dp.rescale_saturate(b, s_b.reshape(()), s_c.reshape(()))
    lv.arrays = {"a": a, "b": b, "a_rescaled": a2, "b_rescaled": b2, "output": y}
    lv.layouts = dict.fromkeys(lv.arrays, "as in the graph")
    lv.layouts["a_rescaled"] = "sat8(rne(f32(f32(a) * a_multiplier))), before the add"
    lv.layouts["b_rescaled"] = "sat8(rne(f32(f32(b) * b_multiplier))), before the add"
    f32 = np.float32
    lv.scalars = {
        "a_scale": _scalar(s_a),
        "b_scale": _scalar(s_b),
        "c_scale": _scalar(s_c),
        "a_multiplier": _scalar(np.divide(f32(s_a.reshape(())), f32(s_c.reshape(())), dtype=f32)),
        "b_multiplier": _scalar(np.divide(f32(s_b.reshape(())), f32(s_c.reshape(())), dtype=f32)),
    }
    return lv


def check_systolic(model: onnx.ModelProto, source: str) -> None:
    """Refuse a graph that is not meant for the Systolic backend or has no array layer."""
    try:
        target = resolve_target(model)
    except SdkError as exc:
        raise VectorError(f"{source}: {exc}") from None
    if target != "systolic":
        raise VectorError(
            f"{source}: not a Systolic graph (quantize it with backend 'systolic' first)"
        )
    if not any(n.op_type in LAYER_OPS for n in model.graph.node):
        raise VectorError(f"{source}: the graph has no accelerator layer to export")


def extract_layers(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]
) -> tuple[list[LayerVectors], dict[str, np.ndarray]]:
    """Run ``model`` on the Systolic emulator and return each layer's checked vectors
    and the graph's outputs."""
    ex = Executor(model, target="systolic")
    layers: list[LayerVectors] = []
    # Golden vectors come from the reference datapath; records are taken one at a time, so
    # each intermediate tensor is freed after its last use.
    with ort_engine.using("numpy"):
        for rec in ex.iter_nodes(feeds):
            if rec.op_type not in LAYER_OPS:
                continue
            ctx = KernelContext(target="systolic", node_name=rec.name or rec.op_type)
            if rec.op_type in ("QLinearConv", "QLinearConv_nhwc"):
                layers.append(_conv_layer(rec, ctx, rec.op_type == "QLinearConv_nhwc"))
            elif rec.op_type == "QLinearMatMul":
                layers.append(_matmul_layer(rec))
            else:
                layers.append(_add_layer(rec))
    outputs = {n: ex.last_env[n] for n in ex.output_names}
    return layers, outputs
