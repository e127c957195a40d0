"""Calibration tables: round trips in every format and onnxruntime's own files."""

from __future__ import annotations

import numpy as np
import pytest

from systolic_sdk.calibration.table import (
    CalibrationTableError,
    decode_flatbuffers,
    encode_flatbuffers,
    read_table,
    write_table,
)

RANGES = {
    "input": (-1.0, 1.0),
    "conv 1/out": (0.0, 6.000000000000001),
    "fc": (-123.456789, 0.1 + 0.2),
    "tiny": (-1e-30, 5e-324),
}


@pytest.mark.parametrize("suffix", [".json", ".txt", ".cache"])
def test_json_and_text_round_trip_bit_for_bit(tmp_path, suffix):
    path = write_table(RANGES, tmp_path / f"t{suffix}", method="entropy")
    assert read_table(path) == RANGES


def test_random_ranges_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    lo = -np.abs(rng.standard_normal(200) * 10.0 ** rng.integers(-20, 20, 200))
    ranges = {f"t{i}": (float(a), float(-a * rng.random())) for i, a in enumerate(lo)}
    for fmt in ("json", "text"):
        assert read_table(write_table(ranges, tmp_path / f"r.{fmt}", fmt), fmt) == ranges


def test_flatbuffers_round_trip_is_symmetric(tmp_path):
    path = write_table(RANGES, tmp_path / "calibration.flatbuffers")
    got = read_table(path)
    assert got == {k: (-max(-lo, hi), max(-lo, hi)) for k, (lo, hi) in RANGES.items()}


def test_onnxruntime_reads_our_flatbuffers():
    trt = pytest.importorskip("onnxruntime.quantization.CalTableFlatBuffers.TrtTable")
    table = trt.TrtTable.GetRootAs(encode_flatbuffers(RANGES), 0)
    got = {
        table.Dict(i).Key().decode(): float(table.Dict(i).Value())
        for i in range(table.DictLength())
    }
    assert got == {k: max(-lo, hi) for k, (lo, hi) in RANGES.items()}


def test_we_read_onnxruntime_tables(tmp_path):
    qu = pytest.importorskip("onnxruntime.quantization.quant_utils")
    from onnxruntime.quantization.calibrate import TensorData

    cache = {
        "a": TensorData(lowest=np.float32(-2.5), highest=np.float32(2.5)),
        "b": TensorData(lowest=np.float32(-0.75), highest=np.float32(0.75)),
    }
    qu.write_calibration_table(cache, dir=str(tmp_path))
    want = {"a": (-2.5, 2.5), "b": (-0.75, 0.75)}
    assert read_table(tmp_path / "calibration.flatbuffers") == want
    assert read_table(tmp_path / "calibration.cache") == want
    assert read_table(tmp_path / "calibration.json") == want
    (tmp_path / "plain.json").write_text('{"a": [-2.5, 2.5], "b": [-0.75, 0.75]}')
    assert read_table(tmp_path / "plain.json") == want


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty calibration table"),
        (b"{not json", "not valid JSON"),
        (b'{"a": [1, 2, 3]}', "tensor 'a': expected .rmin, rmax. or lowest/highest"),
        (b"a b c d\n", "line 1: expected"),
        (b"a 2.0 1.0\n", r"tensor 'a': invalid range \(2.0, 1.0\)"),
        (b"a nan 1.0\n", "invalid range"),
    ],
)
def test_bad_tables(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(CalibrationTableError, match=message):
        read_table(path)


def test_truncated_flatbuffers_and_missing_file(tmp_path):
    with pytest.raises(CalibrationTableError, match="not a TensorRT calibration table"):
        decode_flatbuffers(encode_flatbuffers(RANGES)[:40])
    with pytest.raises(CalibrationTableError, match="no such calibration table"):
        read_table(tmp_path / "none.json")
    with pytest.raises(CalibrationTableError, match="unknown calibration table format"):
        write_table(RANGES, tmp_path / "x", "yaml")
