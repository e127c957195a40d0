"""The fp32 graph whose intermediate tensors the quantized graph's tensors stand for.

The Systolic backend equalizes the fp32 model across layers before quantizing it
(``systolic_sdk.transforms.equalization``): every function output is unchanged, but a
tensor between two equalized layers is scaled per channel, and a bounded Clip is split
into ``<name>_relu`` and a per-channel bound. So the fp32 reference of an intermediate
tensor is the user's model or its equalized copy, whichever the quantized weights were
made from: the candidate whose conv weights agree best with the dequantized int8
weights (same node names) is chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from runtime_emulator import datapath as dp
from systolic_sdk.errors import SdkError

PLAIN = "fp32 model"
EQUALIZED = "fp32 model after cross-layer equalization"


@dataclass
class Reference:
    """The chosen fp32 graph, its label and every candidate's weight SQNR (dB)."""

    model: onnx.ModelProto
    label: str
    weight_sqnr_db: dict[str, float | None]
    layers_compared: int


def _dequantized_conv_weights(
    qmodel: onnx.ModelProto,
) -> dict[str, np.ndarray]:
    """Node name and weight name (without ``_quantized``) -> dequantized OIHW weights of
    every QLinearConv(_nhwc) node (this SDK keeps node names, onnxruntime's quantizer
    keeps weight names)."""
    inits = {t.name: t for t in qmodel.graph.initializer}
    out = {}
    for node in qmodel.graph.node:
        if node.op_type not in ("QLinearConv", "QLinearConv_nhwc"):
            continue
        names = list(node.input)
        if len(names) < 6 or any(names[i] not in inits for i in (3, 4)):
            continue
        w = numpy_helper.to_array(inits[names[3]])
        scale = numpy_helper.to_array(inits[names[4]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[names[5]]) if names[5] in inits else np.zeros((), w.dtype)
        if node.op_type == "QLinearConv_nhwc":
            w = w.transpose(w.ndim - 1, w.ndim - 2, *range(w.ndim - 2))  # HWIO -> OIHW
        axis = 0 if scale.size > 1 else None
        deq = dp.dequantize_linear(w, scale, zp, axis)
        if node.name:
            out[node.name] = deq
        if names[3].endswith("_quantized"):
            out.setdefault(names[3][: -len("_quantized")], deq)
    return out


def weight_sqnr(qweights: dict[str, np.ndarray], model: onnx.ModelProto) -> tuple[float, int]:
    """SQNR (dB) of the dequantized weights against ``model``'s Conv weights of the same
    node (or weight) names, over all matching layers, and the number of layers matched."""
    inits = {t.name: t for t in model.graph.initializer}
    signal = noise = 0.0
    matched = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        q = qweights.get(node.name) if node.name else None
        q = qweights.get(node.input[1]) if q is None else q
        if q is None:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        q = q.astype(np.float64)
        if w.shape != q.shape:
            continue
        signal += float(np.sum(w * w))
        noise += float(np.sum((w - q) ** 2))
        matched += 1
    if not matched or signal == 0.0:
        return -math.inf, matched
    return (math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)), matched


def choose_reference(fp32_model: onnx.ModelProto, qmodel: onnx.ModelProto) -> Reference:
    """The fp32 model or its equalized copy, whichever the quantized weights match best."""
    qweights = _dequantized_conv_weights(qmodel)
    plain_db, matched = weight_sqnr(qweights, fp32_model)
    scores: dict[str, float | None] = {PLAIN: plain_db if matched else None}
    if not matched:
        return Reference(fp32_model, PLAIN, scores, 0)
    try:
        from systolic_sdk.transforms.equalization import equalize

        equalized = equalize(fp32_model)
    except SdkError:
        return Reference(fp32_model, PLAIN, scores, matched)
    eq_db, eq_matched = weight_sqnr(qweights, equalized)
    scores[EQUALIZED] = eq_db if eq_matched else None
    if eq_matched == matched and eq_db > plain_db:
        return Reference(equalized, EQUALIZED, scores, matched)
    return Reference(fp32_model, PLAIN, scores, matched)
