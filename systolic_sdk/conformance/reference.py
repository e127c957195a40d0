"""Each case's arithmetic step by step, through the datapath functions, under a rounding
policy: the expected output (policy ``rne``) and everything the tags state (accumulators,
rounding steps, saturation, ReLU, pooling rule).

This is a second, step-wise account of spec sections 2-5 written with
``runtime_emulator.datapath``; the generator requires it to agree with the emulator's
kernels bit for bit before a case is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator.kernels.qlinear_conv_nhwc import conv_path
from systolic_sdk.conformance.cases import Case
from systolic_sdk.conformance.ties import (
    RoundingPolicy,
    RoundingStep,
    exact_product_mask,
    exact_quotient_mask,
)

F32 = np.float32


@dataclass
class Trace:
    """What one pass through a case's datapath saw."""

    output: np.ndarray
    steps: list[RoundingStep] = field(default_factory=list)
    #: exact accumulator (bias + sum of products, before the int32 wrap), int64
    acc_exact: np.ndarray | None = None
    #: the int32 accumulator (wrapped)
    acc32: np.ndarray | None = None
    #: any rounded value above 127 / below -128 before a saturation
    sat_hi: bool = False
    sat_lo: bool = False
    #: a per-input rescale of QLinearAdd saturated
    rescale_saturated: bool = False
    #: values entering a ReLU (fused or QLinearRelu)
    pre_relu: np.ndarray | None = None
    #: fused pool: the conv path and the output under the other padding rule
    conv_path: str | None = None
    other_pool_rule_output: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _saturate(trace: Trace, r: np.ndarray) -> np.ndarray:
    trace.sat_hi |= bool(np.any(r > 127))
    trace.sat_lo |= bool(np.any(r < -128))
    return dp.sat8(r)


def _requantize(
    trace: Trace, acc32: np.ndarray, m: np.float32, policy: RoundingPolicy, label: str
) -> np.ndarray:
    """Spec 2.3-2.4: ``sat8(round(f32(f32(acc) * M)))``."""
    v = dp.scale_accumulator(acc32, m)
    exact = exact_product_mask(acc32.astype(F32), m, v)
    trace.steps.append(RoundingStep(label, v, exact))
    return _saturate(trace, policy(v, exact))


def _scalar(a: np.ndarray | None) -> np.float32:
    return F32(np.asarray(a, dtype=F32).reshape(()))


def conv_geometry(attrs: dict[str, Any], nsp: int = 2) -> tuple[list[int], list[int], list[int]]:
    """(strides, pads, dilations) of a conv's explicit attributes."""
    strides = list(attrs.get("strides", [1] * nsp))
    pads = list(attrs.get("pads", [0] * (2 * nsp)))
    dilations = list(attrs.get("dilations", [1] * nsp))
    return strides, pads, dilations


def _conv_nchw(
    case: Case, x: np.ndarray, w: np.ndarray, policy: RoundingPolicy, trace: Trace
) -> np.ndarray:
    s_x, s_w, s_y = _scalar(case.operand(1)), _scalar(case.operand(4)), _scalar(case.operand(6))
    bias = case.operand(8)
    strides, pads, dilations = conv_geometry(case.attrs)
    group = int(case.attrs.get("group", 1))
    acc = dp.conv_accumulate_reference(
        x, w, strides=strides, pads=pads, dilations=dilations, group=group
    )
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(1, -1, 1, 1)
    trace.acc_exact = acc
    trace.acc32 = dp.wrap32(acc)
    m = dp.requant_multiplier(s_x, s_w, s_y)
    y = _requantize(trace, trace.acc32, m, policy, "accumulator")
    if int(case.attrs.get("relu", 0)):
        trace.pre_relu = y
        y = np.maximum(y, np.int8(0))
    return y


def qlinear_conv(case: Case, policy: RoundingPolicy) -> Trace:
    """QLinearConv (NCHW, OIHW), int8, zero points 0, per-tensor; ``relu`` attribute."""
    trace = Trace(output=np.empty(0))
    trace.output = _conv_nchw(case, case.operand(0), case.operand(3), policy, trace)
    return trace


def qlinear_conv_nhwc(case: Case, policy: RoundingPolicy) -> Trace:
    """QLinearConv_nhwc (NHWC, HWIO) with fused ReLU and max pooling (spec section 3)."""
    trace = Trace(output=np.empty(0))
    x, w = case.operand(0), case.operand(3)
    y = _conv_nchw(case, x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), policy, trace)
    trace.conv_path = conv_path(case.attrs, x.shape, w.shape)
    if int(case.attrs.get("maxpool", 0)):
        pk = list(case.attrs["pool_kernel_shape"])
        ps = list(case.attrs.get("pool_strides", [1, 1]))
        pp = list(case.attrs.get("pool_pads", [0, 0, 0, 0]))
        as_zero = dp.max_pool(y, pk, ps, [pp[0]] * 4, pad_value=0)
        excluded = dp.max_pool(y, pk, ps, pp, pad_value=None)
        if trace.conv_path == "accelerator":
            y, trace.other_pool_rule_output = as_zero, excluded
        else:
            y, trace.other_pool_rule_output = excluded, as_zero
    trace.output = np.ascontiguousarray(y.transpose(0, 2, 3, 1))
    return trace


def qlinear_matmul(case: Case, policy: RoundingPolicy) -> Trace:
    """QLinearMatMul, int8, zero points 0, per-tensor (no bias, no ReLU)."""
    trace = Trace(output=np.empty(0))
    a, b = case.operand(0), case.operand(3)
    s_a, s_b, s_y = _scalar(case.operand(1)), _scalar(case.operand(4)), _scalar(case.operand(6))
    acc = dp.int_matmul_reference(a, b)
    trace.acc_exact = acc
    trace.acc32 = dp.wrap32(acc)
    m = dp.requant_multiplier(s_a, s_b, s_y)
    trace.output = _requantize(trace, trace.acc32, m, policy, "accumulator")
    return trace


def qlinear_add(case: Case, policy: RoundingPolicy) -> Trace:
    """com.microsoft QLinearAdd on the accelerator (spec section 4)."""
    trace = Trace(output=np.empty(0))
    s_c = _scalar(case.operand(6))
    terms = []
    for i, label in ((0, "A rescale"), (3, "B rescale")):
        q = case.operand(i)
        ratio = np.divide(_scalar(case.operand(i + 1)), s_c, dtype=F32)
        qf = q.astype(F32)
        v = np.multiply(qf, ratio, dtype=F32)
        exact = exact_product_mask(qf, ratio, v)
        trace.steps.append(RoundingStep(label, v, exact))
        r = policy(v, exact)
        trace.rescale_saturated |= bool(np.any((r > 127) | (r < -128)))
        terms.append(dp.sat8(r).astype(np.int16))
    total = terms[0] + terms[1]
    y = _saturate(trace, total)
    if int(case.attrs.get("relu", 0)):
        trace.pre_relu = y
        y = np.maximum(y, np.int8(0))
    trace.output = y
    return trace


def qlinear_relu(case: Case, policy: RoundingPolicy) -> Trace:
    """QLinearRelu: ``max(x, 0)`` on int8."""
    x = case.operand(0)
    return Trace(output=np.maximum(x, np.int8(0)), pre_relu=x)


def max_pool(case: Case, policy: RoundingPolicy) -> Trace:
    """int8 MaxPool with ONNX rules (padding excluded)."""
    a = case.attrs
    y = dp.max_pool(
        case.operand(0),
        list(a["kernel_shape"]),
        list(a.get("strides", [1, 1])),
        list(a.get("pads", [0, 0, 0, 0])),
        dilations=list(a.get("dilations", [1, 1])),
        ceil_mode=bool(a.get("ceil_mode", 0)),
        pad_value=None,
    )
    return Trace(output=y)


def quantize_linear(case: Case, policy: RoundingPolicy) -> Trace:
    """QuantizeLinear to int8, zero point 0: ``sat8(round(f32(x / s)))``."""
    trace = Trace(output=np.empty(0))
    x, s = case.operand(0), _scalar(case.operand(1))
    v = np.divide(x.astype(F32), s, dtype=F32)
    exact = exact_quotient_mask(x, s, v)
    trace.steps.append(RoundingStep("x / scale", v, exact))
    trace.output = _saturate(trace, policy(v, exact))
    return trace


def dequantize_linear(case: Case, policy: RoundingPolicy) -> Trace:
    """DequantizeLinear from int8, zero point 0: ``f32(f32(q) * s)``."""
    return Trace(output=dp.dequantize_linear(case.operand(0), _scalar(case.operand(1)), 0))


PIPELINES = {
    "QLinearConv": qlinear_conv,
    "QLinearConv_nhwc": qlinear_conv_nhwc,
    "QLinearMatMul": qlinear_matmul,
    "QLinearAdd": qlinear_add,
    "QLinearRelu": qlinear_relu,
    "MaxPool": max_pool,
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
}


def trace_case(case: Case, policy: RoundingPolicy) -> Trace:
    """Run ``case`` through its op's step-wise datapath under ``policy``."""
    return PIPELINES[case.op](case, policy)
