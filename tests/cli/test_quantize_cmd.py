"""``quantize`` on the shipped model: formats, options, overrides, help."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import onnx
import pytest
from onnx import numpy_helper

from systolic_sdk.cli.quantize_cmd import quantize_command


def _ok(runner, args):
    res = runner.invoke(quantize_command, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    return res


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--format", "qoperator", "--per-channel", "--activation-type", "quint8"],
        ["--format", "integer", "--mode", "static"],
    ],
    ids=["qdq", "qoperator-per-channel-uint8", "integer-static"],
)
def test_static_formats(runner, tmp_path, digits_dir, digits_accuracy, extra):
    out = tmp_path / "q.onnx"
    res = _ok(
        runner,
        [
            digits_dir / "model.onnx",
            "-o",
            out,
            "--calibration-data",
            digits_dir / "calib.npz",
            *extra,
        ],
    )
    assert f"wrote {out}" in res.output
    onnx.checker.check_model(str(out), full_check=True)
    fp32 = digits_accuracy(digits_dir / "model.onnx")
    assert abs(digits_accuracy(out) - fp32) <= 0.01
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]


def test_dynamic_needs_no_data(runner, tmp_path, digits_dir):
    out = tmp_path / "q.onnx"
    res = _ok(runner, [digits_dir / "model.onnx", "-o", out, "--mode", "dynamic", "-q"])
    assert res.output == ""
    ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
    assert ops["DynamicQuantizeLinear"] and ops["ConvInteger"] == 4


def test_onnx_test_data_folder_as_calibration(runner, tmp_path, digits_dir):
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "test_data_set_0", data / "test_data_set_0")
    out = tmp_path / "q.onnx"
    _ok(runner, [digits_dir / "model.onnx", "-o", out, "--calibration-data", data, "--quiet"])
    assert out.exists()


def test_selection_and_overrides(runner, tmp_path, digits_dir):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"/fc1/Gemm_output_0": [{"scale": 0.125, "zero_point": 0}]}))
    out = tmp_path / "q.onnx"
    res = _ok(
        runner,
        [
            digits_dir / "model.onnx", "-o", out, "--calibration-data", digits_dir / "calib.npz",
            "--format", "qoperator", "--nodes-to-exclude", "/conv1/Conv",
            "--op-types", "Conv,Gemm,Relu,MaxPool,Add,Clip,Flatten",
            "--tensor-quant-overrides", overrides,
        ],
    )  # fmt: skip
    assert "QLinearConv" in res.output
    model = onnx.load(str(out))
    by_name = {n.name: n for n in model.graph.node}
    assert by_name["/conv1/Conv"].op_type == "Conv"  # excluded: stays float
    assert Counter(n.op_type for n in model.graph.node)["QLinearConv"] == 3
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [v for k, v in inits.items() if k == "/fc1/Gemm_output_0_scale"]
    assert scales and all(float(s) == 0.125 for s in scales)


def test_help_teaches(runner):
    res = runner.invoke(quantize_command, ["--help"])
    assert res.exit_code == 0
    for text in ("Examples:", "--calibration-data", "--tensor-quant-overrides", "--per-channel"):
        assert text in res.output


def test_registered_in_the_group(runner, tmp_path):
    """Through ``systolic-quantize`` itself, once the command is registered."""
    from systolic_sdk.cli import cli

    if "quantize" not in cli.commands:
        pytest.skip("quantize is not registered in systolic_sdk.cli.COMMANDS yet")
    res = runner.invoke(
        cli, ["quantize", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "q.onnx")]
    )
    assert res.exit_code == 2 and res.stderr.startswith("error: ")
    assert "--version" in runner.invoke(cli, ["--help"]).output


def test_systolic_layout_and_ops_domain(runner, tmp_path, digits_dir):
    out = tmp_path / "q.onnx"
    args = [str(digits_dir / "model.onnx"), "-o", str(out), "--backend", "systolic"]
    args += ["--calibration-data", str(digits_dir / "calib.npz"), "--dataset-size", "32"]
    result = runner.invoke(
        quantize_command, [*args, "--layout", "nhwc", "--ops-domain", "gemmini-ort"]
    )
    assert result.exit_code == 0, result.output
    nodes = onnx.load(out).graph.node
    convs = [n for n in nodes if n.op_type == "QLinearConv_nhwc"]
    assert convs and all(n.domain == "" for n in convs)  # the Gemmini fork's default domain
    assert not [n for n in nodes if n.op_type == "QLinearConv"]


def test_systolic_options_need_the_systolic_backend(runner, tmp_path, digits_dir):
    out = tmp_path / "q.onnx"
    args = [str(digits_dir / "model.onnx"), "-o", str(out), "--layout", "nhwc"]
    result = runner.invoke(
        quantize_command, [*args, "--calibration-data", str(digits_dir / "calib.npz")]
    )
    assert result.exit_code == 2
    assert "--backend systolic" in result.output
    assert not out.exists()
