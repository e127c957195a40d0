"""QLinearConv, ConvInteger and QLinearConv_nhwc kernels: ONNX semantics, the Systolic
restrictions, the conv-path rule and fused max pooling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from runtime_emulator import datapath as dp
from runtime_emulator.errors import EmulatorError, UnsupportedError
from runtime_emulator.kernels import SYSTOLIC_DOMAIN, lookup
from runtime_emulator.kernels.qlinear_conv_nhwc import conv_path
from systolic_sdk.errors import SdkError

from .conftest import run_kernel, run_ort_node

F32 = np.float32


def _ins(x, w, xs=0.5, ws=0.25, ys=1.0, bias=None, xz=0, wz=0, yz=0, wdt=None):
    wdt = wdt or w.dtype
    return [x, np.array(xs, F32), np.array(xz, x.dtype), w, np.asarray(ws, F32),
            np.asarray(wz, wdt), np.array(ys, F32), np.array(yz, x.dtype), bias]  # fmt: skip


def _reference_qconv(ins, strides, pads, dilations, group, relu=False) -> np.ndarray:
    """QLinearConv from the int64 reference accumulator and the spec's float32 steps."""
    x, xs, xz, w, ws, wz, ys, yz, bias = ins
    wz_b = wz.reshape(-1, *([1] * (w.ndim - 1))) if wz.ndim else wz
    acc = dp.conv_accumulate_reference(
        x.astype(np.int64) - xz, w.astype(np.int64) - wz_b, strides=strides, pads=pads,
        dilations=dilations, group=group,
    )  # fmt: skip
    if bias is not None:
        acc = acc + bias.astype(np.int64).reshape(-1, *([1] * (acc.ndim - 2)))
    acc = dp.wrap32(acc)
    m = F32(F32(xs * ws) / ys) if ws.ndim == 0 else np.multiply(xs, ws, dtype=F32) / ys
    m = np.asarray(m, F32).reshape(-1, *([1] * (acc.ndim - 2))) if np.ndim(m) else m
    v = np.rint(np.multiply(acc.astype(F32), m, dtype=F32)).astype(np.int64) + int(yz)
    info = np.iinfo(x.dtype)
    y = np.clip(v, info.min, info.max).astype(x.dtype)
    return np.maximum(y, yz) if relu else y


@st.composite
def nd_conv(draw: st.DrawFn):
    nsp = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2]))
    cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(nsp)]
    size = [draw(st.integers(k, 6)) for k in kernel]
    strides = [draw(st.integers(1, 2)) for _ in range(nsp)]
    pads = [draw(st.integers(0, 1)) for _ in range(2 * nsp)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    xdt = draw(st.sampled_from([np.int8, np.uint8]))
    info = np.iinfo(xdt)
    x = rng.integers(info.min, info.max + 1, (1, cg * group, *size)).astype(xdt)
    w = rng.integers(-128, 128, (mg * group, cg, *kernel)).astype(np.int8)
    per_ch = draw(st.booleans())
    ws = rng.uniform(0.01, 0.1, mg * group) if per_ch else 0.05
    bias = rng.integers(-5000, 5000, mg * group).astype(np.int32)
    ins = _ins(x, w, xs=0.5, ws=ws, ys=F32(draw(st.sampled_from([1.0, 4.0, 16.0]))), bias=bias,
               xz=int(rng.integers(info.min, info.max + 1)), yz=0)  # fmt: skip
    attrs = dict(strides=strides, pads=pads, group=group, relu=int(draw(st.booleans())))
    return ins, attrs


@settings(max_examples=60, deadline=None)
@given(nd_conv())
def test_qlinearconv_equals_reference_nd(case) -> None:
    ins, attrs = case
    nsp = ins[0].ndim - 2
    want = _reference_qconv(ins, attrs["strides"], attrs["pads"], [1] * nsp, attrs["group"],
                            relu=bool(attrs["relu"]))  # fmt: skip
    got = run_kernel("QLinearConv", ins, attrs)[0]
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_qlinearconv_relu_attribute_clamps_at_zero_point() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 2, 5, 5)).astype(np.int8)
    w = rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    ins = _ins(x, w, ys=64.0)
    plain = run_kernel("QLinearConv", ins, {})[0]
    fused = run_kernel("QLinearConv", ins, {"relu": 1})[0]
    assert plain.min() < 0
    assert np.array_equal(fused, np.maximum(plain, 0))
    # Without the attribute the kernel is onnxruntime's QLinearConv.
    names = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale",
             "y_zero_point", "B"]  # fmt: skip
    assert np.array_equal(plain, run_ort_node("QLinearConv", list(zip(names, ins, strict=True)))[0])


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"group": 3}, "group 3"),
        ({"kernel_shape": [2, 2]}, "kernel_shape"),
        ({"strides": [1]}, "strides"),
        ({"auto_pad": "BOGUS"}, "auto_pad"),
        ({"pads": [1, -1, 0, 0]}, "non-negative"),
        ({"strides": [0, 1]}, "positive"),
    ],
)
def test_qlinearconv_rejects_bad_attributes(attrs, message) -> None:
    x = np.zeros((1, 2, 4, 4), np.int8)
    w = np.zeros((2, 2, 3, 3), np.int8)
    with pytest.raises(EmulatorError, match=message) as err:
        run_kernel("QLinearConv", _ins(x, w), attrs)
    assert isinstance(err.value, SdkError) and "QLinearConv" in str(err.value)


def test_systolic_target_refuses_what_the_array_cannot_run() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (1, 2, 4, 4)).astype(np.uint8)
    w = rng.integers(-128, 128, (2, 2, 3, 3)).astype(np.int8)
    ok = _ins(x.view(np.int8), w)
    cases = {
        "'x' is uint8": _ins(x, w),
        "x_zero_point": _ins(x.view(np.int8), w, xz=1),
        "w_scale": _ins(x.view(np.int8), w, ws=[0.1, 0.2]),
    }
    for message, ins in cases.items():
        with pytest.raises(UnsupportedError, match=message):
            run_kernel("QLinearConv", ins, target="systolic")
        run_kernel("QLinearConv", ins, target="cpu")  # standard ONNX: accepted
    assert np.array_equal(
        run_kernel("QLinearConv", ok, target="systolic")[0],
        run_kernel("QLinearConv", ok, target="cpu")[0],
    )
    a = np.zeros((2, 3), np.uint8)
    mm = [a, np.array(1, F32), np.array(0, np.uint8), a.T.copy(), np.array(1, F32),
          np.array(0, np.uint8), np.array(1, F32), np.array(0, np.uint8)]  # fmt: skip
    with pytest.raises(UnsupportedError, match="'a' is uint8"):
        run_kernel("QLinearMatMul", mm, target="systolic")


def test_qlinearconv_rejects_bad_parameters() -> None:
    x = np.zeros((1, 2, 4, 4), np.int8)
    w = np.zeros((2, 2, 3, 3), np.int8)
    with pytest.raises(EmulatorError, match="w_scale"):
        run_kernel("QLinearConv", _ins(x, w, ws=[0.1, 0.2, 0.3]))
    with pytest.raises(EmulatorError, match="B must be int32"):
        run_kernel("QLinearConv", _ins(x, w, bias=np.zeros(2, np.int64)))
    with pytest.raises(UnsupportedError, match="int16"):
        run_kernel("QLinearConv", _ins(x.astype(np.int16), w))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from([1, 2]))
def test_convinteger_matches_onnxruntime(seed: int, per_channel: bool, stride: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    w = rng.integers(0, 256, (4, 3, 3, 2)).astype(np.uint8)
    xz = np.array(rng.integers(0, 256), np.uint8)
    wz = rng.integers(0, 256, 4 if per_channel else ()).astype(np.uint8)
    attrs = {"pads": [1, 0, 2, 1], "strides": [stride, 1]}
    ins = [("x", x), ("w", w), ("x_zero_point", xz), ("w_zero_point", wz)]
    got = run_kernel("ConvInteger", [x, w, xz, wz], attrs)[0]
    if per_channel:  # onnxruntime supports per-tensor zero points only: use onnx.reference
        node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)
        want = ReferenceEvaluator(node).run(None, {"x": x, "w": w, "xz": xz, "wz": wz})[0]
    else:
        want = run_ort_node("ConvInteger", ins, attrs, feeds=("x",), opset=10)[0]
    assert got.dtype == np.int32 and np.array_equal(got, want)


# --- QLinearConv_nhwc ----------------------------------------------------------------------


def _nhwc_ins(x_nchw, w_oihw, **kw):
    ins = _ins(x_nchw, w_oihw, **kw)
    ins[0] = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    ins[3] = np.ascontiguousarray(w_oihw.transpose(2, 3, 1, 0))
    return ins


def test_nhwc_registered_in_both_domains() -> None:
    assert lookup("", "QLinearConv_nhwc") is lookup(SYSTOLIC_DOMAIN, "QLinearConv_nhwc")
    assert lookup("", "QLinearRelu") is lookup(SYSTOLIC_DOMAIN, "QLinearRelu")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 4]), st.booleans())
def test_nhwc_equals_qlinearconv_on_transposed_tensors(seed: int, group: int, relu: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, 4, 7, 5)).astype(np.int8)
    w = rng.integers(-128, 128, (8, 4 // group, 3, 2)).astype(np.int8)
    bias = rng.integers(-3000, 3000, 8).astype(np.int32)
    attrs = {"pads": [1, 0, 1, 1], "strides": [2, 1], "group": group, "relu": int(relu)}
    want = run_kernel("QLinearConv", _ins(x, w, ys=8.0, bias=bias), attrs)[0]
    got = run_kernel("QLinearConv_nhwc", _nhwc_ins(x, w, ys=8.0, bias=bias), attrs,
                     domain=SYSTOLIC_DOMAIN)[0]  # fmt: skip
    assert np.array_equal(got, want.transpose(0, 2, 3, 1))


def test_nhwc_refuses_what_the_hardware_cannot_do() -> None:
    x = np.zeros((1, 4, 4, 2), np.int8)
    w = np.zeros((3, 3, 2, 2), np.int8)
    base = _ins(x, w)
    cases = {
        "x_zero_point": (2, np.array(3, np.int8)),
        "w_scale": (4, np.array([0.1, 0.2], F32)),
        "'x' is uint8": (0, x.astype(np.uint8)),
        "y_zero_point": (7, np.array(1, np.int8)),
    }
    for message, (i, value) in cases.items():
        ins = list(base)
        ins[i] = value
        with pytest.raises(UnsupportedError, match=message):
            run_kernel("QLinearConv_nhwc", ins, {"pads": [1, 1, 1, 1]})


GOOD = {"pads": [1, 1, 1, 1], "strides": [1, 1]}
POOL = {"maxpool": 1, "pool_kernel_shape": [3, 3], "pool_strides": [2, 2],
        "pool_pads": [1, 1, 1, 1]}  # fmt: skip


@pytest.mark.parametrize(
    ("attrs", "x_shape", "w_shape", "path"),
    [
        (GOOD, (1, 8, 8, 4), (3, 3, 4, 8), "accelerator"),
        ({**GOOD, **POOL}, (1, 8, 8, 4), (3, 3, 4, 8), "accelerator"),
        ({**GOOD, "group": 2}, (1, 8, 8, 4), (3, 3, 2, 8), "fallback"),
        ({**GOOD, "dilations": [2, 2]}, (1, 8, 8, 4), (3, 3, 4, 8), "fallback"),
        (GOOD, (1, 8, 9, 4), (3, 3, 4, 8), "fallback"),  # non-square input
        (GOOD, (1, 8, 8, 4), (3, 1, 4, 8), "fallback"),  # non-square kernel
        ({"pads": [1, 1, 0, 0]}, (1, 8, 8, 4), (3, 3, 4, 8), "fallback"),  # unequal pads
        ({"pads": [0, 0, 0, 0], "strides": [2, 1]}, (1, 8, 8, 4), (1, 1, 4, 8), "fallback"),
        ({"auto_pad": "SAME_UPPER"}, (1, 8, 8, 4), (2, 2, 4, 8), "fallback"),  # pads 0,0,1,1
        ({"auto_pad": "SAME_UPPER"}, (1, 8, 8, 4), (3, 3, 4, 8), "accelerator"),
        ({**GOOD, **POOL, "pool_kernel_shape": [3, 2]}, (1, 8, 8, 4), (3, 3, 4, 8), "fallback"),
        ({**GOOD, **POOL, "pool_strides": [2, 1]}, (1, 8, 8, 4), (3, 3, 4, 8), "fallback"),
        ({**GOOD, **POOL, "pool_pads": [1, 0, 1, 0]}, (1, 8, 8, 4), (3, 3, 4, 8), "fallback"),
        # Only pool_pads[0] and pool_pads[1] are compared by the runtime.
        ({**GOOD, **POOL, "pool_pads": [1, 1, 0, 0]}, (1, 8, 8, 4), (3, 3, 4, 8), "accelerator"),
    ],
)
def test_conv_path(attrs, x_shape, w_shape, path) -> None:
    assert conv_path(attrs, x_shape, w_shape) == path


def _pool_case(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, 4, 8, 8)).astype(np.int8)
    w = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
    return x, w


def test_fused_pool_on_the_accelerator_counts_padding_as_zero() -> None:
    x, w = _pool_case(1)
    attrs = {**GOOD, **POOL}
    assert conv_path(attrs, (2, 8, 8, 4), (3, 3, 4, 6)) == "accelerator"
    conv = run_kernel("QLinearConv", _ins(x, w, ys=256.0), GOOD)[0]
    assert conv.min() < 0  # negative outputs: the two padding rules can differ
    got = run_kernel("QLinearConv_nhwc", _nhwc_ins(x, w, ys=256.0), attrs)[0]
    want = dp.max_pool(conv, [3, 3], [2, 2], [1, 1, 1, 1], pad_value=0)
    assert np.array_equal(got, want.transpose(0, 2, 3, 1))
    onnx_rule = dp.max_pool(conv, [3, 3], [2, 2], [1, 1, 1, 1])
    assert not np.array_equal(want, onnx_rule)
    # pool_pads [1, 1, 0, 0]: the runtime pads 1 on every side (it reads pool_pads[0]).
    uneven = {**attrs, "pool_pads": [1, 1, 0, 0]}
    got2 = run_kernel("QLinearConv_nhwc", _nhwc_ins(x, w, ys=256.0), uneven)[0]
    assert np.array_equal(got2, got)


def test_fused_pool_fallback_is_onnx_maxpool() -> None:
    x, w = _pool_case(2)
    attrs = {**GOOD, **POOL, "pool_pads": [1, 0, 1, 0]}
    assert conv_path(attrs, (2, 8, 8, 4), (3, 3, 4, 6)) == "fallback"
    conv = run_kernel("QLinearConv", _ins(x, w, ys=256.0), GOOD)[0]
    got = run_kernel("QLinearConv_nhwc", _nhwc_ins(x, w, ys=256.0), attrs)[0]
    pool_attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 0]}
    want = run_ort_node("MaxPool", [("x", conv)], pool_attrs, feeds=("x",), opset=12)[0]
    assert np.array_equal(got, want.transpose(0, 2, 3, 1))


def test_fused_pool_refuses_unfusable_attributes() -> None:
    x, w = _pool_case(3)
    for extra, message in (
        ({"pool_ceil_mode": 1}, "ceil_mode"),
        ({"pool_dilations": [2, 2]}, "dilations"),
        ({"pool_auto_pad": "SAME_UPPER"}, "pool_auto_pad"),
    ):
        with pytest.raises(UnsupportedError, match=message):
            run_kernel("QLinearConv_nhwc", _nhwc_ins(x, w), {**GOOD, **POOL, **extra})
    with pytest.raises(EmulatorError, match="pool_kernel_shape"):
        run_kernel("QLinearConv_nhwc", _nhwc_ins(x, w), {**GOOD, "maxpool": 1})
