"""The onnxruntime engine (``runtime_emulator.ort_engine``) gives the NumPy datapath's bits.

Differential tests with hypothesis (every QLinearConv form the engine takes, the hard
cases included), whole real models traced through both engines, the self-check's power to
catch the hazards it exists for, and engine selection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given

from runtime_emulator import Executor, ort_engine
from runtime_emulator.kernels import KernelContext, lookup
from systolic_sdk.calibration import ArrayReader, calibrate
from systolic_sdk.cli.emulate_cmd import emulate
from systolic_sdk.quantization import prepare_model, quantize_model, tensors_to_calibrate
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.types import OutputForm
from tests.emulator.test_differential_ort import SETTINGS, _assert_same, qconv_cases, qmatmul_cases

pytestmark = pytest.mark.skipif(
    not ort_engine.available(),
    reason="onnxruntime's integer kernels fail the engine's self-check on this machine "
    "(the emulator uses its NumPy datapath here)",
)


def _systolic(model: onnx.ModelProto, calib: np.ndarray, **options) -> onnx.ModelProto:
    cfg = QuantConfig(backend="systolic", form=OutputForm.QOPERATOR, weight_rounding=False,
                      bias_correction=False, extra_options=options)  # fmt: skip
    prepared = prepare_model(model, cfg)
    names = tensors_to_calibrate(prepared, cfg)
    ranges = calibrate(prepared, ArrayReader({"input": calib}, 64), names, method="minmax")
    return quantize_model(prepared, cfg, dict(ranges))


@pytest.fixture(scope="module")
def systolic_digits_nchw(digits_model, digits_calib) -> onnx.ModelProto:
    return _systolic(digits_model, digits_calib)


@pytest.fixture(scope="module")
def systolic_digits_nhwc(digits_model, digits_calib) -> onnx.ModelProto:
    return _systolic(digits_model, digits_calib, SystolicLayout="nhwc")


def _conv(ins: list, attrs: dict, *, constants: bool) -> np.ndarray:
    """The QLinearConv kernel as the executor calls it; ``constants`` marks every operand
    but x constant, which is when the engine may take the layer."""
    ctx = KernelContext(target="cpu", node_name="conv")
    if constants:
        ctx.extra["constant_inputs"] = frozenset(range(1, len(ins)))
    return lookup("", "QLinearConv")(list(ins), dict(attrs), ctx)[0]


@SETTINGS
@given(qconv_cases())
def test_engine_matches_numpy_datapath(case) -> None:
    ins, attrs = case
    with ort_engine.using("numpy"):
        want = _conv(ins, attrs, constants=True)
    with ort_engine.using("onnxruntime"):
        got = _conv(ins, attrs, constants=True)
    _assert_same(got, want)


def test_auto_pad_layer_follows_the_input_size() -> None:
    """With auto_pad the pads depend on the input's size: one node fed 8x8 then 9x9
    inputs must not reuse the layer compiled for 8x8."""
    rng = np.random.default_rng(7)
    w = rng.integers(-128, 128, (4, 3, 3, 3), dtype=np.int8)
    f32 = np.float32
    attrs = {"auto_pad": "SAME_UPPER", "strides": [2, 2]}
    ctx = KernelContext(target="cpu", node_name="conv")
    ctx.extra["constant_inputs"] = frozenset(range(1, 8))
    for size in (8, 9, 8):
        x = rng.integers(-128, 128, (1, 3, size, size), dtype=np.int8)
        ins = [x, f32(0.05), np.int8(0), w, f32(0.02), np.int8(0), f32(0.4), np.int8(0)]
        with ort_engine.using("numpy"):
            want = _conv(ins, attrs, constants=True)
        with ort_engine.using("onnxruntime"):
            got = lookup("", "QLinearConv")(list(ins), dict(attrs), ctx)[0]
        assert got.shape == want.shape == (1, 4, -(-size // 2), -(-size // 2))
        assert np.array_equal(got, want)


def _matmul(ins: list) -> np.ndarray:
    ctx = KernelContext(target="cpu", node_name="matmul")
    ctx.extra["constant_inputs"] = frozenset(range(1, len(ins)))
    return lookup("", "QLinearMatMul")(list(ins), {}, ctx)[0]


@SETTINGS
@given(qmatmul_cases())
def test_matmul_engine_matches_numpy_datapath(ins) -> None:
    with ort_engine.using("numpy"):
        want = _matmul(ins)
    with ort_engine.using("onnxruntime"):
        got = _matmul(ins)
    _assert_same(got, want)


def test_matmul_engine_takes_constant_2d_b() -> None:
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (2, 3, 64), dtype=np.int8)
    b = rng.integers(-128, 128, (64, 10), dtype=np.int8)
    f32 = np.float32
    ins = [a, f32(0.1), np.int8(0), b, f32(0.02), np.int8(0), f32(0.3), np.int8(0)]
    ctx = KernelContext(target="systolic", node_name="matmul")
    ctx.extra["constant_inputs"] = frozenset(range(1, 8))
    with ort_engine.using("auto"):
        lookup("", "QLinearMatMul")(ins, {}, ctx)
    assert ctx.extra["compiled_layer"][-1] is not None
    batched_b = list(ins)
    batched_b[3] = np.stack([b, b])
    ctx = KernelContext(target="systolic", node_name="matmul")
    ctx.extra["constant_inputs"] = frozenset(range(1, 8))
    with ort_engine.using("auto"):
        lookup("", "QLinearMatMul")(batched_b, {}, ctx)
    assert ctx.extra.get("compiled_layer") is None


def test_engine_takes_the_systolic_layers_and_leaves_the_others() -> None:
    """int8 with zero-point-0 weights compiles; int8 weights with a zero point, fed weights
    and per-channel weight zero points stay on the NumPy datapath."""
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (1, 4, 5, 5), dtype=np.int8)
    w = rng.integers(-128, 128, (3, 4, 3, 3), dtype=np.int8)
    f32 = np.float32
    ins = [x, f32(0.1), np.int8(0), w, f32(0.02), np.int8(0), f32(0.3), np.int8(0)]

    def compiled(ins: list, constants: bool = True) -> bool:
        ctx = KernelContext(target="cpu", node_name="conv")
        if constants:
            ctx.extra["constant_inputs"] = frozenset(range(1, len(ins)))
        pads = [1] * (2 * (ins[0].ndim - 2))
        with ort_engine.using("auto"):
            lookup("", "QLinearConv")(list(ins), {"pads": pads}, ctx)
        entry = ctx.extra.get("compiled_layer")
        return entry is not None and entry[-1] is not None

    assert compiled(ins)
    assert not compiled(ins, constants=False)
    shifted = list(ins)
    shifted[5] = np.int8(3)
    assert not compiled(shifted)
    per_channel = list(ins)
    per_channel[3] = w.astype(np.uint8)
    per_channel[5] = np.array([1, 2, 3], np.uint8)
    assert not compiled(per_channel)
    three_d = list(ins)
    three_d[0] = x[:, :, None]
    three_d[3] = w[:, :, None]
    assert not compiled(three_d)  # outside what the self-check covers


def _trace_both(model: onnx.ModelProto, feeds: dict) -> tuple[dict, dict, Executor]:
    execu = Executor(model)
    with ort_engine.using("numpy"):
        want = execu.run(feeds, trace=True)
    with ort_engine.using("onnxruntime"):
        got = execu.run(feeds, trace=True)
    return got, want, execu


def test_shipped_model_traces_identically(systolic_digits_nchw, digits_test) -> None:
    x = digits_test[0][:64]
    got, want, execu = _trace_both(systolic_digits_nchw, {"input": x})
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert got[name].dtype == want[name].dtype
    assert _compiled_layouts(execu) == {"nchw"}


def _compiled_layouts(execu: Executor) -> set[str]:
    """The layouts of the layers the engine took (every conv must have been taken)."""
    entries = [
        plan[3].extra.get("compiled_layer")
        for node, plan in zip(execu.nodes, execu._plans, strict=True)
        if node.op_type in ("QLinearConv", "QLinearConv_nhwc", "QLinearMatMul")
    ]
    assert entries and all(e is not None and e[-1] is not None for e in entries)
    return {e[0][1] for e in entries if len(e[0]) > 1}


def test_nhwc_model_traces_identically(systolic_digits_nhwc, digits_test) -> None:
    got, want, execu = _trace_both(systolic_digits_nhwc, {"input": digits_test[0][:32]})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert "nhwc" in _compiled_layouts(execu)


def test_self_check_catches_int16_pair_saturation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that adds byte-product pairs in saturating int16 (u8 x s8 without VNNI)
    must fail the self-check."""

    def saturating_layer(self, x: np.ndarray) -> np.ndarray:
        spec = self.spec
        xs = x.astype(np.int64) + (128 if x.dtype == np.int8 else 0)
        ws = spec.w.astype(np.int64)
        if xs.shape[1] % 2 or spec.group != 1 or ws.ndim != 4 or ws.shape[2:] != (1, 1):
            return ort_engine._reference_layer(spec, x)
        # 1x1 convs: channel pairs summed and saturated to int16, as vpmaddubsw does.
        prods = np.einsum("nchw,mc->nmchw", xs, ws[:, :, 0, 0])
        pairs = np.clip(prods[:, :, 0::2] + prods[:, :, 1::2], -32768, 32767)
        acc = pairs.sum(axis=2) - 128 * ws[:, :, 0, 0].sum(axis=1).reshape(1, -1, 1, 1)
        from runtime_emulator import datapath as dp

        m = dp.requant_multiplier(spec.x_scale, spec.w_scale, spec.y_scale)
        return dp.requantize(dp.wrap32(acc), m, spec.y_dtype, spec.y_zero_point, spec.relu)

    monkeypatch.setattr(ort_engine.Layer, "__call__", saturating_layer)
    assert not ort_engine.self_check()


def test_self_check_catches_a_wrong_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ort_engine.Layer.__call__
    assert ort_engine.self_check()  # the real engine passes
    monkeypatch.setattr(ort_engine.Layer, "__call__", lambda self, x: real(self, x) ^ 1)
    assert not ort_engine.self_check()


def test_engine_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ort_engine.ENV_VAR, raising=False)
    assert ort_engine.engine() == "auto"
    monkeypatch.setenv(ort_engine.ENV_VAR, "numpy")
    assert ort_engine.engine() == "numpy" and not ort_engine.enabled()
    with ort_engine.using("onnxruntime"):
        assert ort_engine.engine() == "onnxruntime" and ort_engine.enabled()
    assert ort_engine.engine() == "numpy"
    monkeypatch.setenv(ort_engine.ENV_VAR, "fastest")
    with pytest.raises(ort_engine.EngineError, match="SYSTOLIC_EMULATOR_ENGINE='fastest'"):
        ort_engine.engine()
    monkeypatch.setitem(ort_engine._state, "checked", False)
    with ort_engine.using("onnxruntime"), pytest.raises(ort_engine.EngineError, match="self-check"):
        ort_engine.enabled()
    with ort_engine.using("auto"):
        assert not ort_engine.enabled()


def test_emulate_cli_engines_agree(systolic_digits_nchw, digits_test, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(systolic_digits_nchw, str(model))
    np.save(tmp_path / "x.npy", digits_test[0][:16])
    outs = {}
    for engine in ("numpy", "onnxruntime"):
        result = CliRunner().invoke(
            emulate, [str(model), "--inputs", str(tmp_path / "x.npy"), "--engine", engine,
                   "-o", str(tmp_path / engine)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outs[engine] = dict(np.load(tmp_path / engine / "outputs.npz"))
    assert outs["numpy"].keys() == outs["onnxruntime"].keys()
    for k in outs["numpy"]:
        np.testing.assert_array_equal(outs["numpy"][k], outs["onnxruntime"][k])


def test_reductions_past_the_raw_sum_bound_stay_on_the_datapath() -> None:
    """K * 255 * 255 must stay below 2**31: the int32-wrap corner (K = 2**17 + 8) is
    computed by the NumPy datapath and wraps as the hardware does."""
    f32 = np.float32

    def spec(k: int) -> ort_engine.LayerSpec:
        b = np.full((k, 2), -128, np.int8)
        return ort_engine.LayerSpec(np.dtype(np.int8), f32(1), 0, b, f32(1), 0, f32(1),
                                    np.dtype(np.int8), 0, op="QLinearMatMul")  # fmt: skip

    assert ort_engine.applies(spec(ort_engine.MAX_K))
    assert not ort_engine.applies(spec(ort_engine.MAX_K + 1))
    k = 2**17 + 8
    a = np.full((1, k), -128, np.int8)
    ins = [a, f32(1e-3), np.int8(0), spec(k).w, f32(1e-3), np.int8(0), f32(1.0), np.int8(0)]
    with ort_engine.using("onnxruntime"):
        got = _matmul(ins)
    acc = np.int64(k) * 128 * 128
    want = (acc + 2**31) % 2**32 - 2**31  # the wrapped accumulator
    m = np.float32(np.float32(1e-3) * np.float32(1e-3))
    assert got[0, 0] == np.clip(np.rint(np.float32(want) * m), -128, 127)


def test_emulate_cli_reads_the_environment(
    systolic_digits_nchw, digits_test, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(systolic_digits_nchw, str(model))
    np.save(tmp_path / "x.npy", digits_test[0][:4])
    args = [str(model), "--inputs", str(tmp_path / "x.npy")]
    monkeypatch.setenv(ort_engine.ENV_VAR, "numpy")
    result = CliRunner().invoke(emulate, args)
    assert result.exit_code == 0 and "engine: NumPy datapath" in result.output
    monkeypatch.setenv(ort_engine.ENV_VAR, "bogus")
    result = CliRunner().invoke(emulate, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: SYSTOLIC_EMULATOR_ENGINE='bogus': expected one of auto, onnxruntime, numpy"
    ]
