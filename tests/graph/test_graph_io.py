"""graph.io: atomic writes with ordinary permissions, refusal to overwrite the input."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import check_output_path, load_model, save_model, write_bytes_atomic


def test_written_files_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        out = tmp_path / "a.bin"
        write_bytes_atomic(out, b"abc")
    finally:
        os.umask(old)
    assert out.read_bytes() == b"abc"
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left


def test_save_and_load_round_trip(tmp_path: Path, tiny_model) -> None:
    out = save_model(tiny_model, tmp_path / "m.onnx")
    assert load_model(out).SerializeToString() == tiny_model.SerializeToString()


def test_output_equal_to_input_is_refused(tmp_path: Path, tiny_model) -> None:
    src = save_model(tiny_model, tmp_path / "m.onnx")
    before = src.read_bytes()
    with pytest.raises(SdkError, match="m.onnx"):
        check_output_path(src, src)
    assert src.read_bytes() == before


def test_atomic_dir_replaces_on_success_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    from systolic_sdk.graph.io import atomic_dir, sha256_file

    out = tmp_path / "suite"
    out.mkdir()
    (out / "old.txt").write_text("old")
    old = os.umask(0o027)
    try:
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
    finally:
        os.umask(old)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # 0777 & ~027, not mkdtemp's 0700
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["suite"]  # no temporary folder left
    assert sha256_file(out / "new.txt") == hashlib.sha256(b"new").hexdigest()
