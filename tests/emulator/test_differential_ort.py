"""Differential tests of QLinearConv and QLinearMatMul against onnxruntime's CPU kernels.

int8 and uint8, zero points, per-tensor and per-channel scales, pads, strides,
dilations, groups (depthwise included), K up to 4608, tie-heavy multipliers (0.25, 0.5,
1/32), saturation, accumulators beyond 2**24 and int32 wrap. The expected result is zero
mismatches (see runtime_emulator/README.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime_emulator import datapath as dp

from .conftest import run_kernel, run_ort_node

F32 = np.float32
CONV_NAMES = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale",
              "y_zero_point", "B"]  # fmt: skip
MM_NAMES = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
            "y_zero_point"]  # fmt: skip
TIE_MULTIPLIERS = (0.25, 0.5, 1 / 32)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _qconv_both(ins: list, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    want = run_ort_node("QLinearConv", list(zip(CONV_NAMES, ins, strict=True)), attrs,
                        feeds=("x",))[0]  # fmt: skip
    got = run_kernel("QLinearConv", ins, attrs)[0]
    return got, want


def _qmatmul_both(ins: list) -> tuple[np.ndarray, np.ndarray]:
    want = run_ort_node("QLinearMatMul", list(zip(MM_NAMES, ins, strict=True)), {},
                        feeds=("a",))[0]  # fmt: skip
    got = run_kernel("QLinearMatMul", ins)[0]
    return got, want


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = np.flatnonzero(got.ravel() != want.ravel())
    assert bad.size == 0, f"{bad.size} mismatches, first at {bad[:5]}"


def _draw_values(draw: st.DrawFn, rng: np.random.Generator, dtype: type, shape) -> np.ndarray:
    info = np.iinfo(dtype)
    mode = draw(st.sampled_from(["uniform", "extreme", "narrow", "small", "small"]))
    if mode == "small":  # small accumulators: frequent exact ties under M = 2**-k
        c = 0 if info.min < 0 else int(rng.integers(0, 256))
        return np.clip(rng.integers(c - 5, c + 6, shape), info.min, info.max).astype(dtype)
    if mode == "extreme":
        return rng.choice([info.min, info.max], shape).astype(dtype)
    if mode == "narrow":
        c = int(rng.integers(info.min, info.max + 1))
        return np.clip(rng.integers(c - 8, c + 9, shape), info.min, info.max).astype(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _zero_point(draw: st.DrawFn, dtype: type, shape=()) -> np.ndarray:
    info = np.iinfo(dtype)
    if draw(st.booleans()):
        return np.zeros(shape, dtype)
    vals = draw(st.lists(st.integers(info.min, info.max), min_size=max(1, int(np.prod(shape))),
                         max_size=max(1, int(np.prod(shape)))))  # fmt: skip
    return np.array(vals, dtype).reshape(shape)


def _y_params(
    draw: st.DrawFn, acc: np.ndarray, xs: float, ws: np.ndarray, dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    """y_scale making M = f32(f32(xs * ws) / ys) a tie-heavy power of two (0.25, 0.5,
    1/32), or sized to the actual accumulators (mostly in range, or mostly saturated);
    y_zero_point random."""
    kind = draw(st.sampled_from(["tie", "tie", "range", "saturate"]))
    w0 = float(np.ravel(ws)[0])
    if kind == "tie":
        ys = xs * w0 / draw(st.sampled_from(TIE_MULTIPLIERS))
    else:
        typical = max(float(np.percentile(np.abs(acc.astype(np.float64)), 90)), 1.0)
        target = draw(st.floats(30, 120)) if kind == "range" else draw(st.floats(0.5, 5))
        ys = xs * float(np.max(ws)) * typical / target
    return np.array(ys, F32), _zero_point(draw, dtype)


def _scales(draw: st.DrawFn, n: int | None) -> tuple[np.float32, np.ndarray]:
    """x (or a) scale and per-tensor or per-channel w (or b) scales: powers of two (so
    that tie-heavy multipliers stay exact per channel) or arbitrary floats."""
    pow2 = st.sampled_from([1.0, 0.5, 0.25, 2.0**-5])
    anyf = st.floats(2.0**-13, 1.0, width=32)
    xs = F32(draw(st.one_of(pow2, anyf)))
    elem = draw(st.sampled_from([pow2, anyf]))
    if n is None:
        return xs, np.array(draw(elem), F32)
    return xs, np.array([draw(elem) for _ in range(n)], F32)


@st.composite
def qconv_cases(draw: st.DrawFn):
    xdt, wdt = draw(st.sampled_from([(np.uint8, np.uint8), (np.uint8, np.int8),
                                     (np.int8, np.int8)]))  # fmt: skip
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    large_k = draw(st.integers(0, 9)) == 0
    group = draw(st.sampled_from([1, 1, 1, 2, 3]))
    depthwise = group == 1 and draw(st.integers(0, 4)) == 0
    if large_k:
        group, cg, mg = 1, draw(st.sampled_from([128, 256, 455])), draw(st.integers(1, 3))
    elif depthwise:
        group = draw(st.integers(2, 8))
        cg, mg = 1, draw(st.integers(1, 2))
    else:
        cg, mg = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    top = 4 if large_k else 9
    h = draw(st.integers((kh - 1) * dil[0] + 1, max((kh - 1) * dil[0] + 1, top)))
    w_ = draw(st.integers((kw - 1) * dil[1] + 1, max((kw - 1) * dil[1] + 1, top)))
    attrs: dict = {"strides": [draw(st.integers(1, 3)), draw(st.integers(1, 3))], "group": group}
    if draw(st.integers(0, 4)) == 0:
        attrs["auto_pad"] = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
        dil = [1, 1]  # onnxruntime refuses dilations with SAME_*
    else:
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(4)]
    attrs["dilations"] = dil
    n = draw(st.integers(1, 2))
    c, m = cg * group, mg * group
    x = _draw_values(draw, rng, xdt, (n, c, h, w_))
    w = _draw_values(draw, rng, wdt, (m, cg, kh, kw))
    per_channel = draw(st.booleans())
    x_zp = _zero_point(draw, xdt)
    w_zp = np.zeros(m if per_channel else (), wdt)
    if wdt == np.uint8:
        w_zp = _zero_point(draw, wdt, (m,) if per_channel else ())
    xs, ws = _scales(draw, m if per_channel else None)
    bias_kind = draw(st.sampled_from(["none", "small", "wrap"]))
    bias = None
    if bias_kind == "small":
        bias = rng.integers(-(2**12), 2**12, m).astype(np.int32)
    elif bias_kind == "wrap":
        bias = rng.choice([2**31 - 1 - 2**10, -(2**31) + 2**10], m).astype(np.int32)
    wz = w_zp.reshape(-1, 1, 1, 1) if w_zp.ndim else w_zp
    pads = dp.resolve_pads(attrs.get("auto_pad", "NOTSET"), [h, w_], [kh, kw], attrs["strides"],
                           dil, attrs.get("pads"))  # fmt: skip
    acc = dp.conv_accumulate(
        x.astype(np.int16) - x_zp.astype(np.int16), w.astype(np.int16) - wz.astype(np.int16),
        strides=attrs["strides"], pads=pads, dilations=dil, group=group,
    )  # fmt: skip
    ys, y_zp = _y_params(draw, acc, float(xs), ws, xdt)
    ins = [x, np.array(xs), x_zp, w, ws, w_zp, ys, y_zp, bias]
    return ins, attrs


@SETTINGS
@given(qconv_cases())
def test_qlinearconv_matches_onnxruntime(case) -> None:
    ins, attrs = case
    got, want = _qconv_both(*case)
    _assert_same(got, want)


@st.composite
def qmatmul_cases(draw: st.DrawFn):
    adt, bdt = draw(st.sampled_from([(np.uint8, np.uint8), (np.uint8, np.int8),
                                     (np.int8, np.int8)]))  # fmt: skip
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    k = draw(st.sampled_from([1, 5, 64, 257, 1024, 1025, 2048, 4096]))
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 7))
    layout = draw(st.sampled_from(["2d", "batched_a", "batched_both", "broadcast_b"]))
    a_shape, b_shape = [m, k], [k, n]
    if layout == "batched_a":
        a_shape = [draw(st.integers(1, 3))] + a_shape
    elif layout == "batched_both":
        bsz = draw(st.integers(1, 3))
        a_shape, b_shape = [bsz] + a_shape, [bsz] + b_shape
    elif layout == "broadcast_b":
        a_shape, b_shape = [2, 1] + a_shape, [3] + b_shape
    a = _draw_values(draw, rng, adt, a_shape)
    b = _draw_values(draw, rng, bdt, b_shape)
    per_column = len(b_shape) == 2 and draw(st.booleans())
    a_zp = _zero_point(draw, adt)
    b_zp = np.zeros(n if per_column else (), bdt)
    if bdt == np.uint8:
        b_zp = _zero_point(draw, bdt, (n,) if per_column else ())
    as_, bs = _scales(draw, n if per_column else None)
    acc = dp.int_matmul(
        a.astype(np.int16) - a_zp.astype(np.int16), b.astype(np.int16) - b_zp.astype(np.int16)
    )
    ys, y_zp = _y_params(draw, acc, float(as_), bs, adt)
    if draw(st.integers(0, 3)) == 0:  # float16 scales (opset 21)
        return [a, np.array(as_, np.float16), a_zp, b, bs.astype(np.float16), b_zp,
                np.clip(ys, F32(1e-4), F32(6e4)).astype(np.float16), y_zp]  # fmt: skip
    return [a, np.array(as_), a_zp, b, bs, b_zp, ys, y_zp]


@SETTINGS
@given(qmatmul_cases())
def test_qlinearmatmul_matches_onnxruntime(ins) -> None:
    _assert_same(*_qmatmul_both(ins))


# --- targeted cases, each checking that its feature actually occurred -----------------


def _ties(acc: np.ndarray, m: float) -> int:
    """How many accumulators land exactly on .5 after scaling (exact arithmetic)."""
    v = acc.astype(np.float64) * m  # exact: m is a power of two
    return int(np.count_nonzero(np.abs(v - np.floor(v)) == 0.5))


def test_tie_heavy_multipliers_match_onnxruntime() -> None:
    rng = np.random.default_rng(1)
    for m in TIE_MULTIPLIERS:
        for xdt in (np.int8, np.uint8):
            x = rng.integers(0, 40, (2, 4, 8, 8)).astype(xdt)
            w = rng.integers(-3, 4, (6, 4, 3, 3)).astype(np.int8)
            ys = np.array(1 / m, F32)
            ins = [x, np.array(1, F32), np.array(0, xdt), w, np.array(1, F32),
                   np.array(0, np.int8), ys, np.array(0, xdt), None]  # fmt: skip
            acc = dp.conv_accumulate_reference(
                x.astype(np.int16), w.astype(np.int16), strides=[1, 1], pads=[1, 1, 1, 1],
                dilations=[1, 1], group=1,
            )  # fmt: skip
            assert _ties(acc, m) > 10
            got, want = _qconv_both(ins, {"pads": [1, 1, 1, 1]})
            _assert_same(got, want)
            # Half away from zero would disagree on those ties.
            away = np.sign(acc * m) * np.floor(np.abs(acc * m) + 0.5)
            lo, hi = np.iinfo(xdt).min, np.iinfo(xdt).max
            assert not np.array_equal(np.clip(away, lo, hi).astype(xdt), got)


def test_accumulators_beyond_2_24_match_onnxruntime() -> None:
    """Accumulators just above 2**24, where the int32 -> float32 conversion drops bits:
    row r of ``a`` is 1024 x (-128) then ``t_r``, ``b`` is 1024 x (-128) then 1, so
    ``acc = 2**24 + t_r`` exactly. With M = 2**-25, 2**24 + 1 scales to 0.5 (a tie, 0)
    in float32 where exact arithmetic gives 0.50000003 (1)."""
    tails = np.array([1, -1, 3, 5, 7, 9, 11, 13, -3, 2, 0, 127], np.int64)
    a = np.full((tails.size, 1025), -128, np.int8)
    a[:, -1] = tails
    b = np.full((1025, 1), -128, np.int8)
    b[-1] = 1
    acc = a.astype(np.int64) @ b.astype(np.int64)
    assert acc.ravel().tolist() == (2**24 + tails).tolist()
    changed = 0
    for ys in (2.0**25, 2.0**24, 2.0**23 * 3):
        ins = [a, np.array(1, F32), np.array(0, np.int8), b, np.array(1, F32),
               np.array(0, np.int8), np.array(ys, F32), np.array(0, np.int8)]  # fmt: skip
        got, want = _qmatmul_both(ins)
        _assert_same(got, want)
        exact = np.clip(np.rint(acc / np.float64(F32(ys))), -128, 127)
        changed += int(np.count_nonzero(exact != got))
    assert changed > 0
    # The hand-computed row: acc 2**24 + 1 with M = 2**-25 gives 0 (a tie), not 1.
    ins = [a[:1], np.array(1, F32), np.array(0, np.int8), b, np.array(1, F32),
           np.array(0, np.int8), np.array(2.0**25, F32), np.array(0, np.int8)]  # fmt: skip
    got, want = _qmatmul_both(ins)
    assert got.tolist() == want.tolist() == [[0]]


def test_int32_wrap_matches_onnxruntime() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 8, 6, 6)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 8, 3, 3)).astype(np.int8)
    bias = np.array([2**31 - 1, -(2**31), 2**31 - 5000, -(2**31) + 5000], np.int32)
    acc = dp.conv_accumulate_reference(
        x.astype(np.int16), w.astype(np.int16), strides=[1, 1], pads=[0, 0, 0, 0],
        dilations=[1, 1], group=1,
    ) + bias.astype(np.int64).reshape(1, 4, 1, 1)  # fmt: skip
    assert np.any(acc > 2**31 - 1) and np.any(acc < -(2**31))
    ins = [x, np.array(1, F32), np.array(0, np.int8), w, np.array(1, F32),
           np.array(0, np.int8), np.array(2.0**24, F32), np.array(0, np.int8), bias]  # fmt: skip
    got, want = _qconv_both(ins, {})
    _assert_same(got, want)
    assert np.array_equal(got, dp.requantize(dp.wrap32(acc), F32(2.0**-24)))


def test_saturation_and_k4096_matmul_match_onnxruntime() -> None:
    """K = 4096 extremes (|acc| up to 2**26 after zero points) with y scales that saturate
    most outputs (2**12), some (2**18) or few (2**21)."""
    rng = np.random.default_rng(4)
    saturated = unsaturated = 0
    for adt, bdt in ((np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)):
        info_a, info_b = np.iinfo(adt), np.iinfo(bdt)
        a = rng.choice([info_a.min, info_a.max], (3, 4096)).astype(adt)
        b = rng.choice([info_b.min, info_b.max], (4096, 5)).astype(bdt)
        a_zp = np.array(7 if adt == np.uint8 else -3, adt)
        b_zp = np.array(200 if bdt == np.uint8 else 0, bdt)
        for ys in (2.0**12, 2.0**18, 2.0**21):
            ins = [a, np.array(1, F32), a_zp, b, np.array(0.5, F32), b_zp, np.array(ys, F32),
                   np.array(1, adt)]  # fmt: skip
            got, want = _qmatmul_both(ins)
            _assert_same(got, want)
            at_bound = (got == info_a.min) | (got == info_a.max)
            saturated += int(np.count_nonzero(at_bound))
            unsaturated += int(np.count_nonzero(~at_bound))
    assert saturated > 0 and unsaturated > 0


# --- a real model: the shipped digits CNN quantized by onnxruntime's own tool ----------------


@pytest.mark.parametrize(
    ("act", "per_channel"), [("QUInt8", True), ("QInt8", False)], ids=["u8-perchannel", "s8"]
)
def test_onnxruntime_quantized_digits_model_runs_bit_exact(
    tmp_path, digits_model_path, digits_calib, digits_test, act: str, per_channel: bool
) -> None:
    """QLinearConv (uint8 or int8, per-channel or not), MaxPool on quantized tensors,
    com.microsoft QLinearAdd and Q/DQ run on the emulator's kernels (QGemm on
    onnxruntime): the logits equal onnxruntime's bit for bit on real digits."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    import runtime_emulator

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": digits_calib[i : i + 50]} for i in range(0, 200, 50)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    out = tmp_path / "q.onnx"
    quantize_static(
        str(digits_model_path), str(out), Reader(), quant_format=QuantFormat.QOperator,
        activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8,
        per_channel=per_channel,
    )  # fmt: skip
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QLinearAdd", "QuantizeLinear", "MaxPool"} <= ops
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    x = digits_test[0][:100]
    want = sess.run(None, {"input": x})[0]
    got = runtime_emulator.run(model, {"input": x}, target="cpu")["logits"]
    assert got.dtype == want.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_onnxruntime_quantized_efficientnet_lite0_runs_bit_exact(tmp_path) -> None:
    """A real mobile network (49 QLinearConv, 16 of them depthwise, per-channel uint8,
    9 QLinearAdd) on real photos: the emulator's logits equal onnxruntime's bit for bit."""
    import sys
    from pathlib import Path

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    import runtime_emulator

    folder = Path(__file__).resolve().parents[2] / "models" / "efficientnet_lite0"
    if not (folder / "model.onnx").exists() or not (folder / "photos.npz").exists():
        pytest.skip("models/efficientnet_lite0 is not present")
    sys.path.insert(0, str(folder))
    try:
        from preprocess import preprocess
    finally:
        sys.path.remove(str(folder))
    with np.load(folder / "photos.npz") as z:
        images = z["images"][:12]
    calib = preprocess(images[:8]).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[:4]}, {"input": calib[4:]}])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    out = tmp_path / "q.onnx"
    quantize_static(
        str(folder / "model.onnx"), str(out), Reader(), quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    model = onnx.load(str(out))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    x = preprocess(images[8:]).astype(np.float32)
    want = sess.run(None, {"input": x})[0]
    got = runtime_emulator.run(model, {"input": x}, target="cpu")["logits"]
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
