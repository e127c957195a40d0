"""Usage errors and warnings are single lines, like every other error."""

from __future__ import annotations

import pytest

from systolic_sdk.cli import cli

from .conftest import assert_user_error


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["nosuch"], ["No such command 'nosuch'"]),
        (["validate", "q.onnx"], ["validate", "Missing option '--fp32'"]),
        (["quantize", "m.onnx", "-o", "q.onnx", "--dataset-size", "0"], ["--dataset-size"]),
        (["emulate", "m.onnx", "--inputs", "x", "--target", "foo"], ["--target"]),
        (["quantize", "m.onnx", "--bogus"], ["No such option", "--bogus"]),
    ],
)
def test_usage_errors_are_one_line(runner, args, needles) -> None:
    res = runner.invoke(cli, args)
    line = assert_user_error(res, *needles)
    assert line.endswith("(see --help)")
    assert "Usage:" not in res.output


def test_warnings_are_one_line(runner, digits_model_path, digits_dir, tmp_path) -> None:
    res = runner.invoke(
        cli, ["quantize", str(digits_model_path), "-o", str(tmp_path / "q.onnx"), "--backend",
              "systolic", "--per-channel", "--calibration-data", str(digits_dir / "calib.npz"),
              "--dataset-size", "8", "--no-weight-rounding", "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == [
        "warning: backend 'systolic' supports per-tensor weights only; ignoring per_channel"
    ]


def test_quantize_can_skip_nonfinite_samples(runner, digits_model_path, digits_calib, tmp_path):
    import numpy as np

    data = digits_calib[:8].copy()
    data[3, 0, 5, 5] = np.nan
    np.savez(tmp_path / "nan.npz", input=data)
    args = ["quantize", str(digits_model_path), "-o", str(tmp_path / "q.onnx"),
            "--calibration-data", str(tmp_path / "nan.npz")]  # fmt: skip
    res = runner.invoke(cli, args)
    assert_user_error(res, "--skip-nonfinite")
    res = runner.invoke(cli, [*args, "--skip-nonfinite", "-q"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and (tmp_path / "q.onnx").exists()


def test_unknown_table_suffix_is_refused(runner, digits_model_path, digits_dir, tmp_path):
    out = tmp_path / "ranges.xyz"
    args = ["calibrate", "--model_path", str(digits_model_path), "--dataset_path",
            str(digits_dir / "calib.npz"), "--calibrate-only", "--calibration-table-out",
            str(out), "--dataset_size", "4"]  # fmt: skip
    res = runner.invoke(cli, args)
    assert_user_error(res, "ranges.xyz", "suffix")
    assert not out.exists()
