"""Bad input to ``quantize``: one line 'error: ...', exit code 2, nothing written."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from systolic_sdk.cli.quantize_cmd import quantize_command

from .conftest import assert_nothing_written, assert_user_error


@pytest.fixture
def work(tmp_path, tiny_model_path, tiny_calib):
    """A folder with the tiny model and its calibration data."""
    np.save(tmp_path / "calib.npy", tiny_calib)
    return tmp_path


def _run(runner, args):
    return runner.invoke(quantize_command, [str(a) for a in args])


def test_missing_model(runner, work):
    out = work / "q.onnx"
    res = _run(runner, [work / "nope.onnx", "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "nope.onnx", "no such file")
    assert_nothing_written(out)


def test_model_is_a_folder(runner, work):
    out = work / "q.onnx"
    res = _run(runner, [work, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, str(work), "folder")
    assert_nothing_written(out)


def test_not_onnx(runner, work):
    bad = work / "notes.onnx"
    bad.write_text("this is not a model\n" * 20)
    out = work / "q.onnx"
    res = _run(runner, [bad, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "notes.onnx", "not an ONNX model")
    assert_nothing_written(out)


def test_empty_file(runner, work):
    bad = work / "empty.onnx"
    bad.write_bytes(b"")
    out = work / "q.onnx"
    assert_user_error(_run(runner, [bad, "-o", out, "--mode", "dynamic"]), "empty.onnx")
    assert_nothing_written(out)


def test_truncated_protobuf(runner, work, tiny_model_path):
    data = tiny_model_path.read_bytes()
    bad = work / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    out = work / "q.onnx"
    res = _run(runner, [bad, "-o", out, "--calibration-data", work / "calib.npy"])
    assert_user_error(res, "cut.onnx")
    assert_nothing_written(out)


def test_unreadable_model(runner, work, tiny_model_path, monkeypatch):
    """Permission denied on read (simulated: the tests may run as root, who reads anything)."""
    import pathlib

    locked = work / "locked.onnx"
    shutil.copy(tiny_model_path, locked)
    real = pathlib.Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.onnx":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    out = work / "q.onnx"
    res = _run(runner, [locked, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "locked.onnx", "Permission denied")
    assert_nothing_written(out)


def test_output_equal_to_input(runner, work, tiny_model_path):
    before = tiny_model_path.read_bytes()
    res = _run(runner, [tiny_model_path, "-o", tiny_model_path, "--mode", "dynamic"])
    assert_user_error(res, str(tiny_model_path), "input")
    assert tiny_model_path.read_bytes() == before


def test_missing_output_folder(runner, work, tiny_model_path):
    out = work / "no_such_dir" / "q.onnx"
    res = _run(runner, [tiny_model_path, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "no_such_dir", "does not exist")
    assert not out.parent.exists()


def test_unknown_node_in_nodes_to_exclude(runner, work, tiny_model_path):
    out = work / "q.onnx"
    res = _run(
        runner,
        [tiny_model_path, "-o", out, "--mode", "dynamic", "--nodes-to-exclude", "conv,ghost_node"],
    )
    assert_user_error(res, "ghost_node", "nodes_to_exclude")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('{"c": [{"scale": 0.1, "zero_point": 0}', ["bad.json", "not valid JSON", "line 1"]),
        ('{"c": [{"scale": -1, "zero_point": 0}]}', ["bad.json", "tensor 'c'", "positive"]),
        ('{"c": [{"scale": 0.1}]}', ["bad.json", "tensor 'c'", "zero_point"]),
        ('{"c": {"scale": 0.1, "zero_point": 0, "colour": 1}}', ["tensor 'c'", "colour"]),
        ('["c"]', ["bad.json", "expected an object"]),
        (
            '{"nowhere": [{"scale": 0.1, "zero_point": 0}]}',
            ["tensor 'nowhere'", "not in the model"],
        ),
    ],
)
def test_malformed_overrides(runner, work, tiny_model_path, text, needles):
    bad = work / "bad.json"
    bad.write_text(text)
    out = work / "q.onnx"
    res = _run(
        runner,
        [tiny_model_path, "-o", out, "--calibration-data", work / "calib.npy",
         "--tensor-quant-overrides", bad],
    )  # fmt: skip
    assert_user_error(res, *needles)
    assert_nothing_written(out)


def test_missing_overrides_file(runner, work, tiny_model_path):
    out = work / "q.onnx"
    res = _run(
        runner,
        [tiny_model_path, "-o", out, "--calibration-data", work / "calib.npy",
         "--tensor-quant-overrides", work / "gone.json"],
    )  # fmt: skip
    assert_user_error(res, "gone.json", "no such file")
    assert_nothing_written(out)


def test_static_needs_calibration_data(runner, work, tiny_model_path):
    out = work / "q.onnx"
    assert_user_error(_run(runner, [tiny_model_path, "-o", out]), "--calibration-data")
    assert_nothing_written(out)


def test_dynamic_with_qdq_is_refused(runner, work, tiny_model_path):
    out = work / "q.onnx"
    res = _run(runner, [tiny_model_path, "-o", out, "--mode", "dynamic", "--format", "qdq"])
    assert_user_error(res, "--format integer")
    assert_nothing_written(out)


def test_missing_calibration_data(runner, work, tiny_model_path):
    out = work / "q.onnx"
    res = _run(runner, [tiny_model_path, "-o", out, "--calibration-data", work / "nodata.npz"])
    assert_user_error(res, "nodata.npz")
    assert_nothing_written(out)


def _old_opset_model_with_unconvertible_op(path):
    """Opset 8 with a custom-domain op in the main graph: the version converter refuses."""
    nodes = [
        helper.make_node("Upsample", ["x", "scales"], ["u"], name="up", mode="nearest"),
        helper.make_node("Relu", ["u"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "old",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.save(model, str(path))


def test_opset_that_cannot_be_upgraded(runner, work):
    src = work / "old.onnx"
    _old_opset_model_with_unconvertible_op(src)
    out = work / "q.onnx"
    res = _run(runner, [src, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "opset 7")
    assert_nothing_written(out, src)


def test_node_that_cannot_be_quantized(runner, work, make_tiny_model):
    model = make_tiny_model()
    model.graph.node.append(helper.make_node("Softmax", ["y"], ["p"], name="softmax"))
    model.graph.output[0].name = "p"
    src = work / "softmax.onnx"
    onnx.save(model, str(src))
    out = work / "q.onnx"
    res = _run(
        runner,
        [src, "-o", out, "--calibration-data", work / "calib.npy",
         "--nodes-to-quantize", "conv,softmax"],
    )  # fmt: skip
    assert_user_error(res, "node 'softmax'", "Softmax", "cannot be quantized")
    assert_nothing_written(out, src)


def test_type_the_form_cannot_honour_in_strict_mode(runner, work, tiny_model_path):
    out = work / "q.onnx"
    res = _run(
        runner,
        [tiny_model_path, "-o", out, "--calibration-data", work / "calib.npy",
         "--format", "qoperator", "--activation-type", "qint16", "--strict"],
    )  # fmt: skip
    assert_user_error(res, "QInt16")
    assert_nothing_written(out)


def test_failed_write_leaves_nothing(runner, work, tiny_model_path, monkeypatch):
    """The disk fills up during the write: one-line error, no output, no temporary file."""
    import errno

    import systolic_sdk.graph.io as io

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full_disk)
    out = work / "q.onnx"
    res = _run(runner, [tiny_model_path, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "q.onnx", "No space left on device")
    assert_nothing_written(out)


def test_invalid_quantized_model_is_not_written(runner, work, tiny_model_path, monkeypatch):
    """If the rewrite ever produced a model onnx.checker rejects, nothing is written."""
    import systolic_sdk.quantization as quantization

    real = quantization.quantize_model

    def broken(model, config, ranges, **kw):
        q = real(model, config, ranges, **kw)
        q.graph.node[0].input[0] = "no_such_tensor"
        return q

    monkeypatch.setattr(quantization, "quantize_model", broken)
    out = work / "q.onnx"
    res = _run(runner, [tiny_model_path, "-o", out, "--mode", "dynamic"])
    assert_user_error(res, "onnx.checker")
    assert_nothing_written(out)


def test_calibration_data_that_does_not_fit_the_model(runner, work, tiny_model_path):
    wrong = work / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 9, 9), np.float32))
    out = work / "q.onnx"
    res = _run(runner, [tiny_model_path, "-o", out, "--calibration-data", wrong])
    assert_user_error(res, "wrong.npz")
    assert_nothing_written(out)
