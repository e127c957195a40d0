"""Bad inputs to export-vectors: exit code 2, one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from systolic_sdk.cli.vectors_cmd import export_vectors
from systolic_sdk.vectors import extract


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(export_vectors, list(args))
    return result.exit_code, result.output


def _assert_refused(code: int, output: str, parent: Path, before: set[str], *words: str) -> None:
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for w in words:
        assert w in lines[0], output
    assert {p.name for p in parent.iterdir()} == before  # no temporary folder left behind


def test_cpu_graph_refused(systolic_digits: Path, digits_samples: Path, tmp_path: Path) -> None:
    model = onnx.load(str(systolic_digits))
    for prop in model.metadata_props:
        if prop.key == "systolic_sdk.backend":
            prop.value = "cpu"
    path = tmp_path / "cpu.onnx"
    onnx.save(model, str(path))
    before = {p.name for p in tmp_path.iterdir()}
    code, out = _invoke(str(path), "--data", str(digits_samples), "-o", str(tmp_path / "o"))
    _assert_refused(code, out, tmp_path, before, "not a Systolic graph")


def test_float_model_refused(digits_model_path: Path, digits_samples: Path, tmp_path: Path) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    code, out = _invoke(str(digits_model_path), "--data", str(digits_samples), "-o",
                        str(tmp_path / "o"))  # fmt: skip
    _assert_refused(code, out, tmp_path, before, "model.onnx")


@pytest.mark.parametrize(
    ("data", "fmt", "words"),
    [
        ("missing.npz", "npy", ("missing.npz",)),
        ("bad.npy", "npy", ("bad.npy",)),
        (None, "npy,verilog", ("verilog",)),
        (None, ",", ("no format",)),
    ],
)
def test_bad_data_and_format(
    systolic_digits: Path,
    digits_samples: Path,
    tmp_path: Path,
    data: str | None,
    fmt: str,
    words: tuple[str, ...],
) -> None:
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    path = str(tmp_path / data) if data else str(digits_samples)
    before = {p.name for p in tmp_path.iterdir()}
    code, out = _invoke(str(systolic_digits), "--data", path, "-o", str(tmp_path / "o"),
                        "--format", fmt)  # fmt: skip
    _assert_refused(code, out, tmp_path, before, *words)


def test_wrong_input_shape(systolic_digits: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 5, 5), np.float32))
    before = {p.name for p in tmp_path.iterdir()}
    code, out = _invoke(str(systolic_digits), "--data", str(tmp_path / "x.npy"), "-o",
                        str(tmp_path / "o"))  # fmt: skip
    _assert_refused(code, out, tmp_path, before)


def test_non_empty_output_needs_force(
    systolic_digits: Path, digits_samples: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("x")
    before = {p.name for p in tmp_path.iterdir()}
    args = [str(systolic_digits), "--data", str(digits_samples), "-o", str(out_dir),
            "--format", "npy"]  # fmt: skip
    code, out = _invoke(*args)
    _assert_refused(code, out, tmp_path, before, "--force")
    assert (out_dir / "keep.txt").exists()
    code, out = _invoke(*args, "--force")  # not an earlier export: never deleted
    _assert_refused(code, out, tmp_path, before, "earlier export only")
    assert (out_dir / "keep.txt").exists()
    (out_dir / "keep.txt").unlink()
    code, out = _invoke(*args)
    assert code == 0, out
    (out_dir / "stale.npy").write_bytes(b"x")
    code, out = _invoke(*args, "--force", "--samples", "3")  # replaces the earlier export
    assert code == 0, out
    assert not (out_dir / "stale.npy").exists()
    assert {p.name for p in tmp_path.iterdir()} == before
    first = np.load(out_dir / "layers" / "001_conv1_conv" / "input.npy")
    assert first.shape == (3, 1, 28, 28) and first.dtype == np.int8
    assert not list(out_dir.rglob("*.hex")) and not (out_dir / "layers.h").exists()


def test_inconsistent_vectors_refused(
    systolic_digits: Path,
    digits_samples: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An accumulator that does not requantize to the recorded output is never written."""
    real = extract.conv_integer_core

    def off_by_one(*args: object, **kwargs: object) -> np.ndarray:
        acc = real(*args, **kwargs)
        return acc + np.int32(1000)

    monkeypatch.setattr(extract, "conv_integer_core", off_by_one)
    before = {p.name for p in tmp_path.iterdir()}
    code, out = _invoke(str(systolic_digits), "--data", str(digits_samples), "-o",
                        str(tmp_path / "o"))  # fmt: skip
    _assert_refused(code, out, tmp_path, before, "/conv1/Conv", "inconsistent")


def test_force_never_replaces_the_current_folder_or_the_inputs(
    systolic_digits: Path, digits_samples: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    for target, needle in (
        (".", "current folder"),
        (str(digits_samples), "overlaps the input"),
        (str(systolic_digits.parent), "overlaps the input"),
    ):
        code, out = _invoke(str(systolic_digits), "--data", str(digits_samples), "-o", target,
                            "--force")  # fmt: skip
        assert code == 2 and needle in out, out
    assert {p.name for p in tmp_path.iterdir()} == before
    assert systolic_digits.exists() and digits_samples.exists()
