"""``demo``: quantize the shipped model, score fp32 and int8, write nothing unless asked."""

from __future__ import annotations

import re

import onnx
import pytest

from systolic_sdk.cli.demo_cmd import demo_command, run_demo

from .conftest import assert_user_error


def test_run_demo_default_is_systolic_and_validated(digits_dir):
    result = run_demo(digits_dir)
    assert result.samples == 1000
    assert 0.9 < result.fp32_accuracy <= 1.0
    assert abs(result.quantized_accuracy - result.fp32_accuracy) <= 0.01
    assert result.agreement >= 0.98
    assert result.output is None
    assert result.description.startswith("systolic backend, qoperator static, per-tensor")
    assert "GPTQ weights, bias-corrected" in result.description
    ops = {n.op_type for n in result.quantized_model.graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    report = result.validation
    assert report is not None and report.bit_exact and report.ok
    assert report.samples == 1000 and len(report.tensors) > 10


def test_run_demo_cpu_backend_is_not_validated(digits_dir):
    result = run_demo(digits_dir, backend="cpu")
    assert "cpu backend, qdq static" in result.description
    assert result.validation is None
    assert "QuantizeLinear" in {n.op_type for n in result.quantized_model.graph.node}


@pytest.mark.parametrize("fmt", ["qoperator", "integer"])
def test_run_demo_other_formats(digits_dir, fmt):
    result = run_demo(digits_dir, backend="cpu", quant_format=fmt, per_channel=True)
    assert abs(result.quantized_accuracy - result.fp32_accuracy) <= 0.01


def test_run_demo_nhwc(digits_dir):
    result = run_demo(digits_dir, layout="nhwc")
    assert "QLinearConv_nhwc" in {n.op_type for n in result.quantized_model.graph.node}
    assert result.validation.bit_exact


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
    res = runner.invoke(
        demo_command, [str(digits_dir), "--backend", "cpu", "--format", "qoperator", "-o", str(out)]
    )
    assert res.exit_code == 0, (res.output, res.stderr)
    assert f"wrote {out}" in res.output
    onnx.checker.check_model(str(out), full_check=True)


def test_demo_prints_the_validation(runner, tmp_path, digits_dir):
    from systolic_sdk.backends.systolic import check_systolic_graph

    out = tmp_path / "digits.systolic.onnx"
    res = runner.invoke(demo_command, [str(digits_dir), "-o", str(out)])
    assert res.exit_code == 0, (res.output, res.stderr)
    assert re.search(r"validation:\s+bit-exact, (\d+)/\1 tensors", res.output), res.output
    check_systolic_graph(onnx.load(out))


def test_demo_layout_needs_systolic(runner, digits_dir):
    res = runner.invoke(demo_command, [str(digits_dir), "--backend", "cpu", "--layout", "nhwc"])
    assert_user_error(res, "--layout")


def test_demo_bad_folder(runner, tmp_path):
    res = runner.invoke(demo_command, [str(tmp_path / "nowhere")])
    assert_user_error(res, "nowhere")


def test_demo_help(runner):
    res = runner.invoke(demo_command, ["--help"])
    assert res.exit_code == 0 and "Examples:" in res.output and "MODEL_DIR" in res.output
