"""``demo``: quantize the shipped model, score fp32 and int8, write nothing unless asked."""

from __future__ import annotations

import re

import onnx
import pytest

from systolic_sdk.cli.demo_cmd import demo_command, run_demo

from .conftest import assert_user_error


def test_run_demo_default_static_qdq(digits_dir):
    result = run_demo(digits_dir)
    assert result.samples == 1000
    assert 0.9 < result.fp32_accuracy <= 1.0
    assert abs(result.quantized_accuracy - result.fp32_accuracy) <= 0.01
    assert result.agreement >= 0.98
    assert result.output is None
    assert "qdq static" in result.description
    ops = {n.op_type for n in result.quantized_model.graph.node}
    assert "QuantizeLinear" in ops


@pytest.mark.parametrize("fmt", ["qoperator", "integer"])
def test_run_demo_other_formats(digits_dir, fmt):
    result = run_demo(digits_dir, quant_format=fmt, per_channel=True)
    assert abs(result.quantized_accuracy - result.fp32_accuracy) <= 0.01


def test_demo_from_elsewhere_writes_nothing(runner, tmp_path, monkeypatch, digits_dir):
    """Run outside the repository: falls back to the models/ folder next to the package."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(demo_command, [])
    assert res.exit_code == 0, (res.output, res.stderr)
    fp32 = re.search(r"fp32 accuracy:\s+([\d.]+) %", res.output)
    q = re.search(r"quantized accuracy:\s+([\d.]+) %", res.output)
    assert fp32 and q and "agreement:" in res.output
    assert abs(float(fp32.group(1)) - float(q.group(1))) <= 1.0
    assert list(tmp_path.iterdir()) == []


def test_demo_writes_with_output(runner, tmp_path, digits_dir):
    out = tmp_path / "digits.int8.onnx"
    res = runner.invoke(demo_command, [str(digits_dir), "--format", "qoperator", "-o", str(out)])
    assert res.exit_code == 0, (res.output, res.stderr)
    assert f"wrote {out}" in res.output
    onnx.checker.check_model(str(out), full_check=True)


def test_demo_bad_folder(runner, tmp_path):
    res = runner.invoke(demo_command, [str(tmp_path / "nowhere")])
    assert_user_error(res, "nowhere")


def test_demo_help(runner):
    res = runner.invoke(demo_command, ["--help"])
    assert res.exit_code == 0 and "Examples:" in res.output and "MODEL_DIR" in res.output
