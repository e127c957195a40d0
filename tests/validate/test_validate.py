"""validate: the shipped model against its lowering, corrupted lowerings, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from runtime_emulator.validate import (
    PROPAGATED,
    UNEXPLAINED,
    _default_lowering,
    validate,
)
from systolic_sdk import quantize_static
from systolic_sdk.calibration.reader import ArrayReader
from systolic_sdk.cli.validate_cmd import validate_command
from systolic_sdk.quantization.types import QuantFormat

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits_cnn"


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    if not (DIGITS / "model.onnx").exists():
        pytest.skip("the shipped model is not present")
    out = tmp_path_factory.mktemp("validate") / "digits.systolic.onnx"
    calib = np.load(DIGITS / "calib.npz")["input"]
    quantize_static(
        str(DIGITS / "model.onnx"),
        str(out),
        ArrayReader({"input": calib[:64]}, batch_size=16),
        quant_format=QuantFormat.QOperator,
        backend="systolic",
    )
    return out


@pytest.fixture(scope="module")
def feeds() -> list[dict[str, np.ndarray]]:
    x = np.load(DIGITS / "test.npz")["input"][:300]
    return [{"input": x[i : i + 100]} for i in range(0, len(x), 100)]


def test_shipped_model_is_bit_exact(quantized: Path, feeds) -> None:
    q = onnx.load(str(quantized))
    report = validate(q, onnx.load(str(DIGITS / "model.onnx")), feeds)
    assert report.ok and report.bit_exact
    assert report.first_divergence is None
    names = [t.name for t in report.tensors]
    # Every conv output (fused relu included) is compared, not just the graph output.
    assert "logits" in names and len(names) >= 10
    (out,) = report.outputs
    assert out.bit_exact and out.n_diff == 0
    assert out.top1_agreement >= 0.97
    assert out.sqnr_db > 10.0
    json.dumps(report.to_dict(), allow_nan=False)


def _corrupt_clip(model: onnx.ModelProto) -> onnx.ModelProto:
    """The lowering with the first relu Clip's lower bound raised from 0 to 1."""
    low = _default_lowering(model)
    clip = next(n for n in low.graph.node if n.op_type == "Clip")
    for t in low.graph.initializer:
        if t.name == clip.input[1]:
            t.CopyFrom(numpy_helper.from_array(np.array(1, np.int8), t.name))
    return low


def _corrupt_bias(model: onnx.ModelProto) -> onnx.ModelProto:
    """The lowering with one bias element of the last conv shifted by 1 and by 4 / M."""
    low = _default_lowering(model)
    conv = [n for n in low.graph.node if n.op_type == "QLinearConv"][-1]
    inits = {t.name: t for t in low.graph.initializer}
    sx, sw, sy = (numpy_helper.to_array(inits[conv.input[i]]) for i in (1, 4, 6))
    shift = int(4 * np.max(sy) / (np.max(sx) * np.max(sw))) + 1
    b = numpy_helper.to_array(inits[conv.input[8]]).copy()
    b[3] += shift
    inits[conv.input[8]].CopyFrom(numpy_helper.from_array(b, conv.input[8]))
    return low


def test_corrupted_clip_names_the_conv(quantized: Path, feeds) -> None:
    q = onnx.load(str(quantized))
    report = validate(q, None, feeds[:1], lowering=_corrupt_clip)
    assert not report.ok
    first = report.first_divergence
    conv = next(n for n in q.graph.node if n.op_type == "QLinearConv")
    assert first.node == conv.name and first.tensor == conv.output[0]
    assert (first.emulator, first.lowered) == (0, 1)
    assert first.cause == UNEXPLAINED
    assert len(first.index) == 4
    # Everything after it is a consequence, not another root.
    later = [t for t in report.tensors if t.first is not None and t.name != conv.output[0]]
    assert later and all(set(t.causes) == {PROPAGATED} for t in later)


def test_corrupted_bias_names_the_last_conv(quantized: Path, feeds) -> None:
    q = onnx.load(str(quantized))
    report = validate(q, None, feeds[:1], lowering=_corrupt_bias)
    conv = [n for n in q.graph.node if n.op_type == "QLinearConv"][-1]
    first = report.first_divergence
    assert first.node == conv.name and first.index[1] == 3
    assert first.lowered > first.emulator
    assert not report.ok
    (out,) = report.outputs
    assert not out.bit_exact and out.n_diff > 0


def _args(quantized: Path, *extra: str) -> list[str]:
    return [
        str(quantized),
        "--fp32",
        str(DIGITS / "model.onnx"),
        "--data",
        str(DIGITS / "test.npz"),
        "--samples",
        "200",
        *extra,
    ]


def test_cli_bit_exact_exit_0(quantized: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    res = CliRunner().invoke(validate_command, _args(quantized, "--json", str(out)))
    assert res.exit_code == 0, res.output
    assert "logits: bit-exact yes" in res.output and "SQNR" in res.output
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["outputs"][0]["top1_agreement"] >= 0.97


def test_cli_divergence_exit_1(quantized: Path, monkeypatch) -> None:
    import runtime_emulator.validate as v

    monkeypatch.setattr(v, "_default_lowering", _corrupt_clip)
    res = CliRunner().invoke(validate_command, _args(quantized))
    assert res.exit_code == 1, res.output
    assert "first divergence" in res.output and "unexplained" in res.output
    quiet = CliRunner().invoke(validate_command, _args(quantized, "--quiet"))
    assert quiet.exit_code == 1 and quiet.output == ""


@pytest.mark.parametrize(
    "change, message",
    [
        ({0: "missing.onnx"}, "missing.onnx"),
        ({2: "missing.onnx"}, "missing.onnx"),
        ({4: "missing.npz"}, "missing.npz"),
        ({6: "0"}, "--samples"),
    ],
)
def test_cli_bad_input_exit_2(quantized: Path, tmp_path: Path, change, message) -> None:
    args = _args(quantized)
    for i, v in change.items():
        args[i] = str(tmp_path / v) if v.endswith(("onnx", "npz")) else v
    res = CliRunner().invoke(validate_command, args)
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_cli_help_has_an_example() -> None:
    res = CliRunner().invoke(validate_command, ["--help"])
    assert res.exit_code == 0 and "Example" in res.output and "--fp32" in res.output


def test_classifier_recomputes_every_conv_exactly(quantized: Path, feeds) -> None:
    """The accumulators the classifier reasons about reproduce the emulator's outputs."""
    from runtime_emulator import Executor
    from runtime_emulator import datapath as dp
    from runtime_emulator.validate import _requant_inputs

    q = onnx.load(str(quantized))
    env = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    env.update(Executor(q, target="systolic").run(feeds[0], trace=True))
    convs = [n for n in q.graph.node if n.op_type == "QLinearConv"]
    assert convs
    for node in convs:
        acc, m, zy, _ = _requant_inputs(node, env)
        y = dp.sat8(dp.rne(dp.scale_accumulator(acc, m)) + zy)
        if any(a.name == "relu" and a.i for a in node.attribute):
            y = np.maximum(y, 0)
        np.testing.assert_array_equal(y, env[node.output[0]], err_msg=node.name)


def test_unrunnable_lowering_is_a_one_line_error(quantized: Path, feeds) -> None:
    from systolic_sdk.errors import SdkError

    def keep_custom_op(model: onnx.ModelProto) -> onnx.ModelProto:
        low = _default_lowering(model)
        low.graph.node[1].op_type = "NoSuchOp"
        return low

    q = onnx.load(str(quantized))
    with pytest.raises(SdkError, match="the lowered model: onnxruntime cannot load it"):
        validate(q, None, feeds[:1], lowering=keep_custom_op)


def test_lowering_that_renames_an_output_is_refused(quantized: Path, feeds) -> None:
    from systolic_sdk.errors import SdkError

    def rename(model: onnx.ModelProto) -> onnx.ModelProto:
        low = _default_lowering(model)
        low.graph.output[0].name = "renamed"
        return low

    with pytest.raises(SdkError, match="no output 'logits'"):
        validate(onnx.load(str(quantized)), None, feeds[:1], lowering=rename)


def test_shape_mismatch_is_a_divergence(quantized: Path, feeds) -> None:
    from runtime_emulator.validate import MISMATCH

    def cast_output(model: onnx.ModelProto) -> onnx.ModelProto:
        low = _default_lowering(model)
        node = next(n for n in low.graph.node if n.op_type == "DequantizeLinear")
        mid = node.output[0] + "_f"
        node.output[0] = mid
        low.graph.node.append(
            onnx.helper.make_node("Cast", [mid], ["logits"], to=onnx.TensorProto.DOUBLE)
        )
        low.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
        return low

    report = validate(onnx.load(str(quantized)), None, feeds[:1], lowering=cast_output)
    assert not report.ok
    assert report.first_divergence.tensor == "logits"
    assert report.first_divergence.cause == MISMATCH
    json.dumps(report.to_dict(), allow_nan=False)
