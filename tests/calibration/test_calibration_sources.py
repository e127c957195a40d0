"""open_source(): every file format, order, dataset_size, and the checks against the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from calib_models import conv_model, two_input_model
from onnx import numpy_helper

from systolic_sdk.calibration import DataSourceError, calibrate, open_source
from systolic_sdk.errors import SdkError


def drain(reader) -> list[dict[str, np.ndarray]]:
    return list(iter(reader.get_next, None))


def stacked(reader, name: str = "x") -> np.ndarray:
    return np.concatenate([f[name] for f in drain(reader)])


def write_pb(path: Path, array: np.ndarray, name: str = "") -> None:
    path.write_bytes(numpy_helper.from_array(array, name).SerializeToString())


def test_single_npy_first_axis_indexes_samples(tmp_path, model, samples):
    np.save(tmp_path / "x.npy", samples)
    reader = open_source(tmp_path / "x.npy", model, batch_size=3)
    feeds = drain(reader)
    assert [len(f["x"]) for f in feeds] == [3] * 6 + [2]
    assert np.array_equal(np.concatenate([f["x"] for f in feeds]), samples)
    assert len(reader) == 7


def test_npz_by_name_single_array_and_dataset_size(tmp_path, model, samples):
    np.savez(tmp_path / "named.npz", x=samples)
    np.savez(tmp_path / "anon.npz", samples)
    for f in ("named.npz", "anon.npz"):
        got = stacked(open_source(tmp_path / f, model, dataset_size=5))
        assert np.array_equal(got, samples[:5])


def test_npz_two_inputs_by_name_and_position(tmp_path):
    model = two_input_model()
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = -a
    np.savez(tmp_path / "named.npz", b=b, a=a)  # by name, in any order
    feeds = drain(open_source(tmp_path / "named.npz", model))
    assert np.array_equal(np.concatenate([f["a"] for f in feeds]), a)
    assert np.array_equal(np.concatenate([f["b"] for f in feeds]), b)
    np.savez(tmp_path / "pos.npz", first=a, second=b)  # by position
    feeds = drain(open_source(tmp_path / "pos.npz", model))
    assert np.array_equal(np.concatenate([f["a"] for f in feeds]), a)


def test_folder_of_arrays_in_natural_order(tmp_path, model, samples):
    # one sample per file without the sample axis, and batches with it
    for i in range(10):
        np.save(tmp_path / f"s{i}.npy", samples[i])
    np.savez(tmp_path / "s10.npz", x=samples[10:20])
    reader = open_source(tmp_path, model)
    assert reader.num_samples == 20
    assert np.array_equal(stacked(reader), samples)
    assert np.array_equal(stacked(open_source(tmp_path, model, dataset_size=12)), samples[:12])


def test_onnx_test_data_sets(tmp_path, model, samples):
    for i in range(12):
        d = tmp_path / f"test_data_set_{i}"
        d.mkdir()
        write_pb(d / "input_0.pb", samples[i : i + 1], "x")
        write_pb(d / "output_0.pb", np.zeros((1, 3), np.float32), "y")
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    reader = open_source(tmp_path, model, batch_size=5)
    assert [len(f["x"]) for f in drain(reader)] == [5, 5, 2]
    reader.rewind()
    assert np.array_equal(stacked(reader), samples[:12])  # 10 after 9, not after 1


def test_folder_of_input_pb(tmp_path):
    model = two_input_model()
    a = np.ones((2, 3), np.float32)
    write_pb(tmp_path / "input_0.pb", a)
    write_pb(tmp_path / "input_1.pb", 2 * a)
    feeds = drain(open_source(tmp_path, model, batch_size=2))
    assert len(feeds) == 1 and np.array_equal(feeds[0]["b"], 2 * a)


def test_tensor_bundle_and_sequence_bundle(tmp_path, model, samples):
    write_pb(tmp_path / "bundle.pb", samples, "x")
    assert np.array_equal(stacked(open_source(tmp_path / "bundle.pb", model)), samples)
    two = two_input_model()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    seq = onnx.helper.make_sequence(
        "s",
        onnx.SequenceProto.TENSOR,
        [numpy_helper.from_array(a, "a"), numpy_helper.from_array(a + 1, "b")],
    )
    (tmp_path / "seq.pb").write_bytes(seq.SerializeToString())
    feeds = drain(open_source(tmp_path / "seq.pb", two, batch_size=2))
    assert np.array_equal(feeds[0]["b"], a + 1)


def test_calibrate_from_source(tmp_path, model, samples):
    np.save(tmp_path / "x.npy", samples)
    got = calibrate(model, open_source(tmp_path / "x.npy", model, batch_size=4))
    assert got["x"] == (float(samples.min()), float(samples.max()))


def test_fixed_batch_model_gets_its_batch(tmp_path, samples):
    model = conv_model(batch=1)
    np.save(tmp_path / "x.npy", samples)
    feeds = drain(open_source(tmp_path / "x.npy", model, batch_size=8))
    assert {len(f["x"]) for f in feeds} == {1} and len(feeds) == 20


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "empty folder"),
        (lambda p: (p / "notes.txt").write_text("hi"), "no calibration data found"),
        (lambda p: (p / "junk.npy").write_bytes(b"nope"), "not a readable .npy"),
        (
            lambda p: np.save(p / "a.npy", np.zeros((2, 1, 8, 8), np.float64)),
            "expects float32, got float64",
        ),
        (
            lambda p: np.save(p / "a.npy", np.zeros((2, 1, 8, 7), np.float32)),
            r"input 'x' expects float32 \[\?,1,8,8\] .*got \[2,1,8,7\]",
        ),
        (
            lambda p: np.savez(p / "a.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2)),
            "holds 2 tensor",
        ),
    ],
)
def test_bad_folders(tmp_path, model, make, message):
    make(tmp_path)
    with pytest.raises(DataSourceError, match=message):
        open_source(tmp_path, model)


def test_bad_paths_and_counts(tmp_path, model):
    with pytest.raises(SdkError, match="no such file"):
        open_source(tmp_path / "missing.npz", model)
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(SdkError, match="unsupported calibration data file"):
        open_source(tmp_path / "data.csv", model)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(SdkError, match="dataset_size must be >= 1"):
        open_source(tmp_path / "x.npy", model, dataset_size=0)
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3), np.float32), b=np.zeros((3, 3), np.float32))
    with pytest.raises(SdkError, match="different numbers of samples"):
        open_source(tmp_path / "two.npz", two_input_model())
    (tmp_path / "garbage.pb").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(SdkError, match="not a TensorProto"):
        open_source(tmp_path / "garbage.pb", model)


def test_fixed_batch_of_two_drops_the_incomplete_tail(tmp_path, samples):
    model = conv_model(batch=2)
    np.save(tmp_path / "x.npy", samples[:5])
    with pytest.warns(UserWarning, match="dropping the last 1 sample"):
        feeds = drain(open_source(tmp_path / "x.npy", model))
    assert [len(f["x"]) for f in feeds] == [2, 2]


def test_preprocessing_a_non_image_source_warns(tmp_path, model, samples):
    np.save(tmp_path / "x.npy", samples)
    with pytest.warns(UserWarning, match="applies to images only"):
        open_source(tmp_path / "x.npy", model, preprocess="preprocess_method2")
