"""The Systolic backend's fp32 preparation (GPTQ weight rounding and bias correction by
default, cross-layer equalization on request): each step switchable, fed by the
calibration data, absent from the cpu backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from systolic_helpers import initializers

from systolic_sdk import api
from systolic_sdk.calibration.reader import ArrayReader, CalibrationDataReader
from systolic_sdk.cli import cli
from systolic_sdk.errors import SdkError
from systolic_sdk.quantization.warn import QuantizationWarning
from systolic_sdk.transforms import per_tensor_recipe

OFF = {"equalization": False, "weight_rounding": False, "bias_correction": False}


def _quantize(model: onnx.ModelProto, calib: np.ndarray, **kw) -> onnx.ModelProto:
    return api.quantize_static(
        model, None, ArrayReader({"input": calib}, 16), quant_format="QOperator", **kw
    )


def _same(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    ia, ib = initializers(a), initializers(b)
    return ia.keys() == ib.keys() and all(np.array_equal(ia[k], ib[k]) for k in ia)


@pytest.fixture(scope="module")
def calib(digits_calib: np.ndarray) -> np.ndarray:
    return digits_calib[:48]


@pytest.fixture(scope="module")
def plain(digits_model, calib) -> onnx.ModelProto:
    return _quantize(digits_model, calib, backend="systolic", **OFF)


def _by_hand(model, calib, **switches) -> onnx.ModelProto:
    """per_tensor_recipe run by hand, then the backend with its preparation off."""
    prepared = per_tensor_recipe(model, ArrayReader({"input": calib}, 16), **switches)
    return _quantize(prepared, calib, backend="systolic", **OFF)


def test_default_is_the_recipe_default(digits_model, calib, plain) -> None:
    default = _quantize(digits_model, calib, backend="systolic")
    assert not _same(default, plain)
    assert _same(default, _by_hand(digits_model, calib))


@pytest.mark.parametrize("step", ["equalization", "weight_rounding", "bias_correction"])
def test_each_step_alone(digits_model, calib, plain, step: str) -> None:
    switches = {**OFF, step: True}
    got = _quantize(digits_model, calib, backend="systolic", **switches)
    assert _same(got, _by_hand(digits_model, calib, **switches))
    assert not _same(got, plain)


def test_the_int8_simulation_uses_the_quantizers_calibration(digits_model, calib) -> None:
    """The activation scales simulated while weights are rounded come from the calibration
    method and options the quantizer will use (here Percentile at 99.9), not MinMax."""
    from systolic_sdk.backends.systolic.scales import activation_scales
    from systolic_sdk.calibration import calibrate

    def percentile_scales(model, reader):
        def percentile(m, r, names):
            return calibrate(m, r, names, method="percentile", percentile=99.9)

        return activation_scales(model, reader, calibrate=percentile)

    def final(prepared: onnx.ModelProto, **switches) -> onnx.ModelProto:
        return _quantize(
            prepared, calib, backend="systolic", calibrate_method=api.CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.9}, **switches,
        )  # fmt: skip

    got = final(digits_model)
    reader = ArrayReader({"input": calib}, 16)
    want = per_tensor_recipe(digits_model, reader, activation_scales=percentile_scales)
    assert _same(got, final(want, **OFF))
    minmax_simulated = per_tensor_recipe(digits_model, ArrayReader({"input": calib}, 16))
    assert not _same(got, final(minmax_simulated, **OFF))


def test_a_reader_without_rewind_is_replayed(digits_model, calib) -> None:
    class OneShot(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [{"input": calib[i : i + 16]} for i in range(0, len(calib), 16)]

        def get_next(self):
            return self.batches.pop(0) if self.batches else None

    assert not hasattr(OneShot(), "rewind")
    got = api.quantize_static(
        digits_model, None, OneShot(), quant_format="QOperator", backend="systolic"
    )
    assert _same(got, _quantize(digits_model, calib, backend="systolic"))


def test_cpu_backend_warns_and_ignores(digits_model, calib) -> None:
    with pytest.warns(QuantizationWarning, match="equalization: not available"):
        got = _quantize(digits_model, calib, backend="cpu", equalization=True)
    assert _same(got, _quantize(digits_model, calib, backend="cpu"))


def test_without_data_only_the_data_free_steps_run(digits_model, calib, tmp_path):
    cache = tmp_path / "ranges.json"
    _quantize(
        digits_model, calib, backend="systolic", equalization=True, calibration_cache_path=cache
    )
    assert cache.exists()
    with pytest.warns(QuantizationWarning, match="bias correction needs calibration data"):
        again = api.quantize_static(
            digits_model, None, None, quant_format="QOperator", backend="systolic",
            bias_correction=True, equalization=True, calibration_cache_path=cache,
        )  # fmt: skip
    prepared = per_tensor_recipe(digits_model, None, equalization=True)
    by_hand = api.quantize_static(
        prepared, None, None, quant_format="QOperator", backend="systolic",
        calibration_cache_path=cache, **OFF,
    )  # fmt: skip
    assert _same(again, by_hand)


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_cli_flags(digits_model_path: Path, digits_dir: Path, tmp_path: Path, plain) -> None:
    out = tmp_path / "q.onnx"
    code, text = _cli(
        ["quantize", str(digits_model_path), "-o", str(out), "--backend", "systolic",
         "--calibration-data", str(digits_dir / "calib.npz"), "--dataset-size", "48",
         "--no-weight-rounding", "--no-bias-correction", "-q"]
    )  # fmt: skip
    assert code == 0, text
    assert _same(onnx.load(out), plain)
    code, text = _cli(["quantize", "--help"])
    for flag in ("--equalization", "--no-weight-rounding", "--no-bias-correction"):
        assert flag in text


def test_cli_refuses_the_flags_in_dynamic_mode(digits_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    code, text = _cli(
        ["quantize", str(digits_model_path), "-o", str(out), "--mode", "dynamic", "--equalization"]
    )
    assert code == 2
    assert text.strip().splitlines() == [
        "error: --equalization, --weight-rounding and --bias-correction apply to static mode only"
    ]
    assert not out.exists()


def test_the_quantized_model_records_the_applied_steps(digits_model, calib, plain) -> None:
    default = _quantize(digits_model, calib, backend="systolic")
    props = {p.key: p.value for p in default.metadata_props}
    assert props["systolic_sdk.float_prep"] == "weight_rounding,bias_correction"
    assert "systolic_sdk.float_prep" not in {p.key for p in plain.metadata_props}


def test_int8_in_loop_extra_option(digits_model, calib) -> None:
    """SystolicInt8InLoop=False measures GPTQ and bias correction on fp32 instead (the
    recipe's int8_in_loop=False); anything but a bool is refused."""
    fp32_measured = _quantize(
        digits_model, calib, backend="systolic", extra_options={"SystolicInt8InLoop": False}
    )
    assert _same(fp32_measured, _by_hand(digits_model, calib, int8_in_loop=False))
    assert not _same(fp32_measured, _quantize(digits_model, calib, backend="systolic"))
    with pytest.raises(SdkError, match="SystolicInt8InLoop: expected True or False, got 'no'"):
        _quantize(
            digits_model, calib, backend="systolic", extra_options={"SystolicInt8InLoop": "no"}
        )


def test_only_the_final_calibration_shows_a_progress_bar(digits_model, calib, monkeypatch) -> None:
    """The int8 simulation calibrates too (with the final method); it shows no bar of its
    own, so that a terminal sees one "calibrating" bar, the final calibration's."""
    import importlib

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    real = collect_mod._Progress
    asked: list = []

    def progress(reader, enabled):
        asked.append(enabled)
        return real(reader, False)

    monkeypatch.setattr(collect_mod, "_Progress", progress)
    _quantize(digits_model, calib, backend="systolic")
    assert asked == [False, None]  # None: a bar when stderr is a terminal
