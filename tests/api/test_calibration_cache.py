"""calibration_cache_path: every calibration-table format reads; ranges write at full precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import systolic_sdk
from systolic_sdk.calibration import ArrayReader
from systolic_sdk.calibration.table import write_table
from systolic_sdk.quantization import tensors_to_calibrate
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.prepare import prepare_model


def _names(model) -> list[str]:
    config = QuantConfig()
    return list(tensors_to_calibrate(prepare_model(model, config), config))


@pytest.mark.parametrize("suffix", [".json", ".txt", ".flatbuffers"])
def test_every_table_format_is_a_cache(tiny_model, tmp_path: Path, suffix: str) -> None:
    """A table written by write_table in any format quantizes like the same ranges in JSON."""
    names = _names(tiny_model)
    # symmetric ranges, so the FlatBuffers table (which keeps max |r|) holds the same ranges
    ranges = {n: (-(i + 1) / 3.0, (i + 1) / 3.0) for i, n in enumerate(names)}
    table = write_table(ranges, tmp_path / f"t{suffix}")
    ref = write_table(ranges, tmp_path / "ref.json")
    got = systolic_sdk.quantize_static(tiny_model, None, None, calibration_cache_path=table)
    want = systolic_sdk.quantize_static(tiny_model, None, None, calibration_cache_path=ref)
    assert got.SerializeToString() == want.SerializeToString()


def test_onnxruntime_text_cache_reads(tiny_model, tmp_path: Path) -> None:
    """onnxruntime's calibration.cache lines ``tensor value`` read as (-value, value)."""
    names = _names(tiny_model)
    cache = tmp_path / "calibration.cache"
    cache.write_text("".join(f"{n} {0.5 * (i + 1)!r}\n" for i, n in enumerate(names)))
    ref = write_table(
        {n: (-0.5 * (i + 1), 0.5 * (i + 1)) for i, n in enumerate(names)}, tmp_path / "r.json"
    )
    got = systolic_sdk.quantize_static(tiny_model, None, None, calibration_cache_path=cache)
    want = systolic_sdk.quantize_static(tiny_model, None, None, calibration_cache_path=ref)
    assert got.SerializeToString() == want.SerializeToString()


def test_cache_keeps_full_precision(tiny_model, tiny_calib, tmp_path: Path) -> None:
    """minmax_avg averages are not float32 numbers; re-quantizing from the written cache
    gives the same model, bit for bit, as quantizing from the calibration data."""
    cache = tmp_path / "ranges.json"
    options = {"CalibMovingAverage": True}
    first = systolic_sdk.quantize_static(
        tiny_model,
        None,
        ArrayReader({"x": tiny_calib}, batch_size=3),
        calibration_cache_path=cache,
        extra_options=options,
    )
    from systolic_sdk.calibration.table import read_table

    ranges = read_table(cache)
    assert any(float(np.float32(v)) != v for pair in ranges.values() for v in pair)
    again = systolic_sdk.quantize_static(
        tiny_model, None, None, calibration_cache_path=cache, extra_options=options
    )
    assert again.SerializeToString() == first.SerializeToString()
