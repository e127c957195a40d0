"""The Systolic backend's fp32 preparation (cross-layer equalization, bias correction):
on by default, each switchable, fed by the calibration data, absent from the cpu backend."""

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
from systolic_sdk.quantization.warn import QuantizationWarning
from systolic_sdk.transforms import per_tensor_recipe


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
    return _quantize(
        digits_model, calib, backend="systolic", equalization=False, bias_correction=False
    )


def test_default_runs_equalization_and_bias_correction(digits_model, calib, plain) -> None:
    default = _quantize(digits_model, calib, backend="systolic")
    prepared = per_tensor_recipe(digits_model, {"input": calib})
    by_hand = _quantize(
        prepared, calib, backend="systolic", equalization=False, bias_correction=False
    )
    assert not _same(default, plain)
    assert _same(default, by_hand)


@pytest.mark.parametrize("eq,bc", [(True, False), (False, True)])
def test_each_step_is_switchable(digits_model, calib, plain, eq: bool, bc: bool) -> None:
    got = _quantize(digits_model, calib, backend="systolic", equalization=eq, bias_correction=bc)
    prepared = per_tensor_recipe(
        digits_model, {"input": calib}, equalization=eq, bias_correction=bc
    )
    by_hand = _quantize(
        prepared, calib, backend="systolic", equalization=False, bias_correction=False
    )
    assert _same(got, by_hand)
    assert not _same(got, plain)


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


def test_bias_correction_without_data_is_skipped_with_a_warning(digits_model, calib, tmp_path):
    cache = tmp_path / "ranges.json"
    first = _quantize(
        digits_model, calib, backend="systolic", bias_correction=False, calibration_cache_path=cache
    )
    assert cache.exists()
    with pytest.warns(QuantizationWarning, match="bias correction needs calibration data"):
        again = api.quantize_static(
            digits_model,
            None,
            None,
            quant_format="QOperator",
            backend="systolic",
            bias_correction=True,
            calibration_cache_path=cache,
        )
    assert _same(first, again)


def _cli(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_cli_flags(digits_model_path: Path, digits_dir: Path, tmp_path: Path, plain) -> None:
    out = tmp_path / "q.onnx"
    code, text = _cli(
        [
            "quantize",
            str(digits_model_path),
            "-o",
            str(out),
            "--backend",
            "systolic",
            "--calibration-data",
            str(digits_dir / "calib.npz"),
            "--dataset-size",
            "48",
            "--no-equalization",
            "--no-bias-correction",
            "-q",
        ]
    )
    assert code == 0, text
    assert _same(onnx.load(out), plain)
    code, text = _cli(["quantize", "--help"])
    assert "--no-equalization" in text and "--no-bias-correction" in text


def test_cli_refuses_the_flags_in_dynamic_mode(digits_model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    code, text = _cli(
        ["quantize", str(digits_model_path), "-o", str(out), "--mode", "dynamic", "--equalization"]
    )
    assert code == 2
    assert text.strip().splitlines() == [
        "error: --equalization and --bias-correction apply to static mode only"
    ]
    assert not out.exists()
