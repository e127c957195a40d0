"""``systolic-quantize emulate`` end to end through click's CliRunner, on the shipped
model quantized by onnxruntime (QOperator, int8, symmetric) and its real test data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from systolic_sdk.cli.emulate_cmd import emulate

pytest.importorskip("runtime_emulator.kernels.all", reason="emulator kernels not present yet")


@pytest.fixture(scope="module")
def qmodel(digits_ort_int8: Path) -> Path:
    return digits_ort_int8


def _ort(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _write_set(folder: Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x, "input").SerializeToString())
    if y is not None:
        (folder / "output_0.pb").write_bytes(
            numpy_helper.from_array(y, "logits").SerializeToString()
        )
    return folder


def _invoke(*args: str):
    return CliRunner().invoke(emulate, [str(a) for a in args])


def test_test_data_folder_bit_exact_outputs_and_trace(qmodel, digits_test, tmp_path) -> None:
    x = digits_test[0][:16]
    folder = _write_set(tmp_path / "test_data_set_0", x, _ort(qmodel, x))
    out, trace = tmp_path / "out", tmp_path / "trace"
    res = _invoke(qmodel, "--inputs", folder, "-o", out, "--trace", trace)
    assert res.exit_code == 0, res.output
    assert "outputs match the expected output_K.pb bit for bit" in res.output
    # The table: one row per QLinearConv of the model, then the totals.
    q = onnx.load(str(qmodel))
    convs = [n.name for n in q.graph.node if n.op_type == "QLinearConv"]
    rows = [line for line in res.output.splitlines() if "QLinearConv" in line]
    assert [r.split()[0] for r in rows] == convs
    assert "16x1x28x28" in rows[0]
    assert any(line.startswith("total") for line in res.output.splitlines())
    # Outputs: output_0.pb and outputs.npz, equal to onnxruntime's.
    y = numpy_helper.to_array(onnx.load_tensor(str(out / "output_0.pb")))
    np.testing.assert_array_equal(y, _ort(qmodel, x))
    with np.load(out / "outputs.npz") as z:
        np.testing.assert_array_equal(z["logits"], y)
    # Trace: every tensor of the graph but the initializers, and the node list.
    index = json.loads((trace / "nodes.json").read_text())
    inits = {t.name for t in q.graph.initializer}
    produced = {o for n in q.graph.node for o in n.output} | {"input"}
    with np.load(trace / "tensors.npz") as z:
        assert set(z.files) == produced - inits
        np.testing.assert_array_equal(z["logits"], y)
        np.testing.assert_array_equal(z["input"], x)
    assert [n["name"] for n in index["nodes"]] == [n.name for n in q.graph.node]
    assert {n["backend"] for n in index["nodes"]} >= {"kernel", "onnxruntime"}


def test_model_folder_with_several_sets(qmodel, digits_test, tmp_path) -> None:
    x = digits_test[0]
    _write_set(tmp_path / "m" / "test_data_set_0", x[:4], _ort(qmodel, x[:4]))
    _write_set(tmp_path / "m" / "test_data_set_1", x[4:6], None)
    res = _invoke(qmodel, "--inputs", tmp_path / "m", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "2 input set(s)" in res.output
    for k, n in ((0, 4), (1, 2)):
        y = numpy_helper.to_array(
            onnx.load_tensor(str(tmp_path / f"o/test_data_set_{k}/output_0.pb"))
        )
        np.testing.assert_array_equal(y, _ort(qmodel, x[k * 4 : k * 4 + n]))


def test_npy_and_npz_inputs_and_dim(qmodel, digits_test, tmp_path) -> None:
    x = digits_test[0][:3]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", input=x)
    for src in ("x.npy", "x.npz"):
        res = _invoke(qmodel, "--inputs", tmp_path / src, "-o", tmp_path / src.replace(".", "_"))
        assert res.exit_code == 0, res.output
        with np.load(tmp_path / src.replace(".", "_") / "outputs.npz") as z:
            np.testing.assert_array_equal(z["logits"], _ort(qmodel, x))
    # A bigger array means fewer, larger tiles.
    r16 = _invoke(qmodel, "--inputs", tmp_path / "x.npy")
    r32 = _invoke(qmodel, "--inputs", tmp_path / "x.npy", "--dim", "32")
    tiles = [
        [ln.split()[3] for ln in r.output.splitlines() if ln.startswith("total")]
        for r in (r16, r32)
    ]
    assert int(tiles[0][0]) > int(tiles[1][0])
    assert "DIM 32" in r32.output


def test_shipped_test_data_set_reports_mismatch(qmodel, digits_dir, tmp_path) -> None:
    # test_data_set_0 holds fp32 logits: the int8 model's outputs cannot match them bit for bit.
    src = digits_dir / "test_data_set_0"
    res = _invoke(qmodel, "--inputs", src)
    assert res.exit_code == 0, res.output
    x = onnx.numpy_helper.to_array(onnx.load_tensor(str(src / "input_0.pb")))
    ref = onnx.numpy_helper.to_array(onnx.load_tensor(str(src / "output_0.pb")))
    got = _ort(qmodel, x)  # the emulator is bit-exact with onnxruntime on this model
    n_bad = int(np.count_nonzero(got != ref))
    agree = int(np.sum(got.argmax(-1) == ref.argmax(-1)))
    assert n_bad > 0 and agree >= ref.shape[0] - 1
    assert (
        f"differs from the reference outputs: output 'logits': {n_bad} of {ref.size} elements "
        f"differ (max |diff| {float(np.max(np.abs(got.astype(np.float64) - ref))):.6g}); "
        f"top-1 agreement {agree}/{ref.shape[0]}"
    ) in res.output
    assert "applies to reference outputs produced by this quantized graph" in res.output
    assert "MISMATCH" not in res.output
    strict = _invoke(qmodel, "--inputs", src, "--strict")
    assert strict.exit_code == 1
    shutil.copytree(src, tmp_path / "copy")  # the source folder is never written to
    assert sorted(p.name for p in src.iterdir()) == sorted(
        p.name for p in (tmp_path / "copy").iterdir()
    )


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.npz", "missing.npz: no such file or folder"),
        (lambda d: _save(d / "x.npy", np.zeros((1, 1, 28, 28))), "dtype float64, expected float32"),
        (lambda d: _save(d / "x.npy", np.zeros((1, 28, 28), np.float32)), "shape [1, 28, 28]"),
        (lambda d: _savez(d / "x.npz", a=np.zeros(1), b=np.zeros(1)), "no array for input 'input'"),
        (lambda d: _text(d / "x.npy"), "not a readable .npy array"),
        (lambda d: _text(d / "input_0.pb").parent, "not a serialized ONNX TensorProto"),
        (lambda d: _text(d / "x.txt"), "unknown input format"),
        (lambda d: d, "no input_K.pb files and no test_data_set_N folders"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(qmodel, tmp_path, make, needle) -> None:
    path = make(tmp_path)
    res = _invoke(qmodel, "--inputs", path)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.output


def test_bad_model_and_output_paths(qmodel, digits_test, tmp_path) -> None:
    np.save(tmp_path / "x.npy", digits_test[0][:1])
    res = _invoke(tmp_path / "nope.onnx", "--inputs", tmp_path / "x.npy")
    assert res.exit_code == 2 and res.output.startswith("error: ") and "nope.onnx" in res.output
    (tmp_path / "file").write_text("x")
    res = _invoke(qmodel, "--inputs", tmp_path / "x.npy", "-o", tmp_path / "file")
    assert res.exit_code == 2


def test_help_teaches() -> None:
    res = _invoke("--help")
    assert res.exit_code == 0
    assert "Example:" in res.output and "--inputs" in res.output and "--trace" in res.output


def _save(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


def _savez(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _text(path: Path) -> Path:
    path.write_text("not data")
    return path


# --- runtime_emulator.io on its own ----------------------------------------------------


def test_io_maps_named_tensors_and_npz_keys(tmp_path) -> None:
    from runtime_emulator.io import InputError, load_input_sets

    a, b = np.arange(3, dtype=np.float32), np.arange(4, dtype=np.int64)
    folder = tmp_path / "set"
    folder.mkdir()
    # input_0.pb is named "b": names win over positions; unnamed files go by position.
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(b, "b").SerializeToString())
    (folder / "input_1.pb").write_bytes(numpy_helper.from_array(a).SerializeToString())
    (sets,) = load_input_sets(folder, ["a", "b"], ["y"])
    assert set(sets.feeds) == {"a", "b"} and sets.expected is None
    np.testing.assert_array_equal(sets.feeds["b"], b)
    np.testing.assert_array_equal(sets.feeds["a"], a)
    np.savez(tmp_path / "two.npz", a=a, b=b, extra=a)
    (npz,) = load_input_sets(tmp_path / "two.npz", ["a", "b"])
    assert set(npz.feeds) == {"a", "b"}
    np.save(tmp_path / "one.npy", a)
    with pytest.raises(InputError, match="one array given but the model has 2 inputs"):
        load_input_sets(tmp_path / "one.npy", ["a", "b"])
    (pb,) = load_input_sets(folder / "input_1.pb", ["only"])
    np.testing.assert_array_equal(pb.feeds["only"], a)


def test_io_compare_and_write_outputs(tmp_path) -> None:
    from runtime_emulator.io import compare_outputs, write_outputs

    y = np.array([[1, -2], [3, 4]], np.int8)
    assert compare_outputs({"y": y}, {"y": y.copy()}) == []
    assert compare_outputs({"y": y}, {"y": y.astype(np.int32)}) == [
        "output 'y': dtype int8 != expected int32"
    ]
    assert compare_outputs({"y": y}, {"y": y[:1]}) == [
        "output 'y': shape [2, 2] != expected [1, 2]"
    ]
    z = y.copy()
    z[1, 1] = 7
    assert compare_outputs({"y": y}, {"y": z}) == [
        "output 'y': 1 of 4 elements differ (max |diff| 3)"
    ]
    written = write_outputs(tmp_path / "o", {"y": y, "unused": z}, ["y"])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["output_0.pb", "outputs.npz"]
    assert written[0].name == "output_0.pb"
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load_tensor(str(written[0]))), y)
