"""No command writes over what it reads: models, data files and folders, tables, suites."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from systolic_sdk.cli import cli

from .conftest import assert_user_error


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits_model_path, digits_calib) -> dict[str, Path]:
    """A copy of the shipped model, calibration data, a test-data folder and a Systolic model."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("protect")
    model = root / "m.onnx"
    shutil.copy(digits_model_path, model)
    calib = root / "calib.npz"
    np.savez(calib, input=digits_calib[:16])
    td = root / "td"
    shutil.copytree(digits_model_path.parent / "test_data_set_0", td)
    quant = root / "q.onnx"
    res = CliRunner().invoke(
        cli, ["quantize", str(model), "-o", str(quant), "--backend", "systolic",
              "--calibration-data", str(calib), "--no-weight-rounding", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"model": model, "calib": calib, "td": td, "quant": quant, "root": root}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["quantize", "{model}", "-o", "{calib}", "--calibration-data", "{calib}"], "calib.npz"),
        (["quantize", "{model}", "-o", "{td}/input_0.pb", "--calibration-data", "{td}"], "td"),
        (
            ["validate", "{quant}", "--fp32", "{model}", "--data", "{calib}", "--json", "{quant}"],
            "q.onnx",
        ),
        (
            ["validate", "{quant}", "--fp32", "{model}", "--data", "{calib}", "--json", "{model}"],
            "m.onnx",
        ),
        (
            [
                "calibrate",
                "--model_path",
                "{model}",
                "--dataset_path",
                "{calib}",
                "--output_model_path",
                "{root}/c.onnx",
                "--calibration-table-out",
                "{calib}",
            ],
            "calib.npz",
        ),
        (
            [
                "calibrate",
                "--model_path",
                "{model}",
                "--dataset_path",
                "{calib}",
                "--output_model_path",
                "{root}/same.onnx",
                "--calibration-table-out",
                "{root}/same.onnx",
            ],
            "same.onnx",
        ),
        (["emulate", "{quant}", "--inputs", "{td}", "-o", "{td}"], "td"),
        (["emulate", "{quant}", "--inputs", "{td}", "--trace", "{root}"], "overlaps"),
    ],
    ids=lambda v: " ".join(v[:1]) if isinstance(v, list) else None,
)
def test_outputs_never_replace_inputs(runner, work, args, needle) -> None:
    before = _snapshot(work["root"])
    res = runner.invoke(cli, [a.format(**work) for a in args])
    assert_user_error(res, needle)
    assert _snapshot(work["root"]) == before


def test_conformance_junit_inside_the_suite_is_refused(runner, tmp_path) -> None:
    suite = tmp_path / "suite"
    res = runner.invoke(cli, ["conformance", "generate", "-o", str(suite), "--ops",
                              "QuantizeLinear"])  # fmt: skip
    assert res.exit_code == 0, res.output
    before = _snapshot(suite)
    res = runner.invoke(cli, ["conformance", "run", str(suite), "--backend", "emulator",
                              "--junit", str(suite / "manifest.json")])  # fmt: skip
    assert_user_error(res, "inside the suite")
    assert _snapshot(suite) == before


def test_validate_refuses_data_without_samples(runner, work, tmp_path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, input=np.zeros((0, 1, 28, 28), np.float32))
    res = runner.invoke(cli, ["validate", str(work["quant"]), "--fp32", str(work["model"]),
                              "--data", str(empty)])  # fmt: skip
    assert_user_error(res, "empty.npz", "no samples")


def test_static_runner_reports_a_bad_model_first(runner, tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    res = runner.invoke(cli, ["static-runner", "-i", str(bad), "-o", str(tmp_path / "o.onnx")])
    assert_user_error(res, "bad.onnx")
    assert "test_data_set" not in res.stderr


def test_validate_refuses_a_float_model_as_the_quantized_one(runner, work) -> None:
    res = runner.invoke(cli, ["validate", str(work["model"]), "--fp32", str(work["model"]),
                              "--data", str(work["calib"])])  # fmt: skip
    assert_user_error(res, "m.onnx", "no quantized tensors")


def test_validate_names_the_data_file_on_a_shape_mismatch(runner, work, tmp_path) -> None:
    bad = tmp_path / "wshape.npz"
    np.savez(bad, input=np.zeros((4, 3, 5), np.float32), label=np.zeros(4))
    res = runner.invoke(cli, ["validate", str(work["quant"]), "--fp32", str(work["model"]),
                              "--data", str(bad)])  # fmt: skip
    assert_user_error(res, "wshape.npz", "input 'input'", "[4,3,5]")
