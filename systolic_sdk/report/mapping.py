"""Which quantized tensors have a chosen scale, and which fp32 tensor each one stands for.

A *quantization point* is the output of a node that picks an output scale and zero point
(QuantizeLinear, QLinearConv, QLinearMatMul, QLinearAdd, QGemm, ...). Its fp32
counterpart is found from the quantizers' naming (this SDK's and onnxruntime's):

1. the tensor's own name without its ``_quantized``, ``_nhwc`` and ``_1x1`` suffixes
   (``/Relu_output_0_quantized_nhwc`` -> ``/Relu_output_0``);
2. else the name of its output scale without ``_scale`` (the tensor whose range was
   calibrated: ``/conv1/Conv_output_0_scale`` -> ``/conv1/Conv_output_0``).

A fused ReLU (``relu=1``) is applied to the fp32 values. Without one, an fp32 Relu or
Clip that the quantized graph folded into the output range (its output has no quantized
counterpart) is followed, so the reference is what the quantized tensor represents.
NHWC tensors (``_nhwc`` names, QLinearConv_nhwc outputs) get the fp32 NCHW values
transposed; a ``_1x1`` form is a reshape of the same values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

#: (y_scale, y_zero_point) input positions of ops that choose their output's scale.
OUTPUT_QPARAMS: dict[str, tuple[int, int]] = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearConv_nhwc": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearAveragePool": (3, 4),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearConcat": (0, 1),
}
_SUFFIXES = ("_quantized", "_nhwc", "_1x1")
_FOLDED_ACTIVATIONS = ("Relu", "Clip")
#: Ops on an int8 tensor that keep its scale and only clamp it (the Systolic backend's
#: per-channel ReLU6 bound after cross-layer equalization is a Min).
_CLAMPS = ("Min", "Max", "Clip", "Relu", "QLinearRelu")


@dataclass(frozen=True)
class QuantPoint:
    """One quantized tensor with a chosen scale, and how to get its fp32 reference."""

    tensor: str
    node: str
    op_type: str
    index: int  # the producing node's position in the quantized graph's topological order
    scale_name: str
    zero_point_name: str
    fp32: str | None  # the fp32 tensor, None when no counterpart was found
    relu: bool  # apply max(x, 0) to the fp32 values
    nhwc: bool  # the quantized tensor is NHWC (fp32 is NCHW)
    #: The layer's result, compared with fp32 for its SQNR: ``tensor``, or the output of
    #: the int8 clamps (Min/Max/Clip/Relu with constant bounds) that alone consume it.
    result: str = ""
    result_index: int = -1
    result_fp32: str | None = None
    result_nhwc: bool = False
    clamped_by: tuple[str, ...] = ()
    #: In a QDQ graph, the float op whose output this QuantizeLinear quantizes.
    qdq_op: str | None = None
    qdq_node: str | None = None

    @property
    def is_layer(self) -> bool:
        """A compute layer: a quantized op, or in a QDQ graph the op a QuantizeLinear
        follows (not the quantization of a graph input)."""
        return self.op_type != "QuantizeLinear" or self.qdq_op is not None

    @property
    def layer_name(self) -> str:
        return self.qdq_node if self.qdq_op is not None and self.qdq_node else self.node

    @property
    def layer_op(self) -> str:
        return f"{self.qdq_op} (QDQ)" if self.qdq_op is not None else self.op_type


def _attr_int(node: onnx.NodeProto, name: str) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return 0


def strip_suffixes(name: str) -> tuple[str, bool]:
    """``name`` without trailing layout/quantization suffixes, and whether one was _nhwc."""
    nhwc = False
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                nhwc |= suffix == "_nhwc"
                name = name[: -len(suffix)]
                changed = True
    return name, nhwc


def fp32_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Graph inputs and node outputs of a float model (the names one can fetch)."""
    inits = {t.name for t in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in inits}
    names |= {o for n in model.graph.node for o in n.output if o}
    return names


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                users.setdefault(name, []).append(node)
    return users


def quant_points(
    qmodel: onnx.ModelProto, fp32_model: onnx.ModelProto, order: Iterable[onnx.NodeProto]
) -> list[QuantPoint]:
    """Every quantization point of ``qmodel`` (``order``: its nodes in execution order),
    mapped to ``fp32_model``'s tensors."""
    available = fp32_tensor_names(fp32_model)
    fp32_graph_outputs = {o.name for o in fp32_model.graph.output}
    users = _consumers(fp32_model)
    q_names = {o for n in qmodel.graph.node for o in n.output if o}
    represented = {strip_suffixes(n)[0] for n in q_names if n.endswith(_SUFFIXES)}
    q_users = _consumers(qmodel)
    q_consts = {t.name for t in qmodel.graph.initializer}
    q_outputs = {o.name for o in qmodel.graph.output}
    position = {id(n): i for i, n in enumerate(order)}
    producers = {o: n for n in order for o in n.output if o}
    # A QDQ graph has no quantized compute op: its layers are the float ops that a
    # QuantizeLinear quantizes the output of.
    qdq = not any(n.op_type in OUTPUT_QPARAMS and n.op_type != "QuantizeLinear" for n in order)
    points = []
    for index, node in enumerate(order):
        pos = OUTPUT_QPARAMS.get(node.op_type)
        if pos is None or not node.output or not node.output[0]:
            continue
        if len(node.input) <= pos[0] or not node.input[pos[0]]:
            continue  # e.g. QGemm without y_scale has a float output
        out = node.output[0]
        relu = bool(_attr_int(node, "relu"))
        base, nhwc = strip_suffixes(out)
        nhwc |= node.op_type == "QLinearConv_nhwc"
        fp32 = base if base in available else None
        if fp32 is None:
            scale_name = node.input[pos[0]]
            if scale_name.endswith("_scale") and scale_name[: -len("_scale")] in available:
                fp32 = scale_name[: -len("_scale")]
        if fp32 is not None and not relu:
            seen = {fp32}
            while fp32 not in fp32_graph_outputs:
                nxt = users.get(fp32, [])
                if len(nxt) != 1 or nxt[0].op_type not in _FOLDED_ACTIVATIONS:
                    break
                folded = nxt[0].output[0]
                if folded in represented or folded in seen:
                    break
                fp32 = folded
                seen.add(fp32)
        zp = node.input[pos[1]] if len(node.input) > pos[1] else ""
        result, result_index, clamps = out, index, []
        while result not in q_outputs and node.op_type != "QuantizeLinear":
            nxt = q_users.get(result, [])
            if len(nxt) != 1 or nxt[0].op_type not in _CLAMPS or id(nxt[0]) not in position:
                break
            if any(n and n != result and n not in q_consts for n in nxt[0].input):
                break
            result, result_index = nxt[0].output[0], position[id(nxt[0])]
            clamps.append(nxt[0].op_type)
        qdq_op = qdq_node = None
        if qdq and node.op_type == "QuantizeLinear":
            src = producers.get(node.input[0])
            if src is not None and src.op_type not in ("DequantizeLinear", "Constant"):
                qdq_op, qdq_node = src.op_type, src.name or src.output[0]
        result_fp32, result_nhwc = fp32, nhwc
        if clamps:
            base, result_nhwc = strip_suffixes(result)
            if base in available:
                result_fp32 = base
            else:
                result, result_index, clamps = out, index, []
        points.append(
            QuantPoint(
                tensor=out,
                node=node.name or out,
                op_type=node.op_type,
                index=index,
                scale_name=node.input[pos[0]],
                zero_point_name=zp,
                fp32=fp32,
                relu=relu,
                nhwc=nhwc,
                result=result,
                result_index=result_index,
                result_fp32=result_fp32,
                result_nhwc=result_nhwc,
                clamped_by=tuple(clamps),
                qdq_op=qdq_op,
                qdq_node=qdq_node,
            )
        )
    return points


def reference_values(
    point: QuantPoint, fp32: np.ndarray, q_shape: tuple[int, ...], *, result: bool = False
) -> np.ndarray:
    """The fp32 values laid out as the quantized tensor (``q_shape``), fused ReLU applied;
    with ``result``, those of the layer's result (see :attr:`QuantPoint.result`).

    Raises ValueError when the element counts differ.
    """
    ref = np.asarray(fp32, dtype=np.float32)
    if point.relu:
        ref = np.maximum(ref, np.float32(0))
    name = point.result_fp32 if result else point.fp32
    nhwc = point.result_nhwc if result else point.nhwc
    if ref.size != int(np.prod(q_shape, dtype=np.int64)):
        raise ValueError(
            f"fp32 tensor '{name}' {list(ref.shape)} does not match "
            f"'{point.result if result else point.tensor}' {list(q_shape)}"
        )
    if nhwc and len(q_shape) >= 3:
        nchw = (q_shape[0], q_shape[-1], *q_shape[1:-1])
        perm = (0, *range(2, len(q_shape)), 1)
        return ref.reshape(nchw).transpose(perm)
    return ref.reshape(q_shape)


def qparams(
    point: QuantPoint, values: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a point from initializers or traced values; None if absent."""
    scale = values.get(point.scale_name)
    if scale is None:
        return None
    zp = values.get(point.zero_point_name) if point.zero_point_name else None
    if zp is None:
        zp = np.zeros((), np.uint8 if point.op_type == "QuantizeLinear" else np.int8)
    return np.asarray(scale), np.asarray(zp)
