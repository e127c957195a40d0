"""Files of an export: manifest hashes, hex line format, the C header compiled by cc."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import systolic_sdk
from runtime_emulator.array import ArrayConfig

WIDTH = {"int8": 2, "int32": 8, "float32": 8}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_hashes_and_metadata(exported: tuple[Path, dict], systolic_digits: Path) -> None:
    folder, man = exported
    assert man["model_sha256"] == _sha(systolic_digits)
    assert man["sdk_version"] == systolic_sdk.__version__
    assert man["array"]["DIM"] == ArrayConfig().dim
    assert man["formats"] == ["pb", "npy", "c-header", "hex"]
    listed = [f for layer in man["layers"] for f in layer["files"]]
    listed += [f for out in man["graph_outputs"] for f in out["files"]] + [man["header"]]
    for f in listed:
        assert _sha(folder / f["path"]) == f["sha256"], f["path"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk == {f["path"] for f in listed} | {"manifest.json"}
    for layer in man["layers"]:
        for key, t in layer["tensors"].items():
            npy = next(f for f in layer["files"] if f["tensor"] == key and f["format"] == "npy")
            assert npy["shape"] == t["shape"] and npy["dtype"] == t["dtype"]
        if layer["op"] != "QLinearAdd":
            assert "(c, kh, kw)" in layer["tensors"]["weights"]["layout"]
            m = layer["scalars"]["multiplier"]
            bits = np.array([int(m["bits"], 16)], np.uint32).view(np.float32)[0]
            assert float(bits) == m["float"] == float.fromhex(m["hex"])


def test_hex_files(exported: tuple[Path, dict]) -> None:
    folder, man = exported
    for layer in man["layers"]:
        for f in (f for f in layer["files"] if f["format"] == "hex"):
            lines = (folder / f["path"]).read_text().splitlines()
            arr = np.load(folder / f["path"].replace(".hex", ".npy"))
            assert len(lines) == max(arr.size, 1)
            width = WIDTH[f["dtype"]]
            assert all(re.fullmatch(f"[0-9a-f]{{{width}}}", line) for line in lines), f["path"]
            unsigned = np.array([int(line, 16) for line in lines], f"u{arr.dtype.itemsize}")
            assert np.array_equal(unsigned.view(arr.dtype), arr.reshape(-1)), f["path"]


def test_c_header_compiles_with_sizes(exported: tuple[Path, dict], tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH")
    folder, man = exported
    lines = [f'#include "{folder / man["header"]["path"]}"', ""]
    for layer in man["layers"]:
        p = layer["c_prefix"]
        for key, t in layer["tensors"].items():
            name = f"{p}_{key.upper()}"
            size = int(np.prod(t["shape"]))
            dims = " * ".join(f"{name}_DIM{i}" for i in range(len(t["shape"]))) or "1"
            lines += [
                f'_Static_assert(sizeof({name}) / sizeof({name}[0]) == {name}_LEN, "{name}");',
                f'_Static_assert({name}_LEN == {size}, "{name} size");',
                f'_Static_assert({dims} == {name}_LEN, "{name} dims");',
                f'_Static_assert({name}_NDIM == {len(t["shape"])}, "{name} ndim");',
            ]
        if "multiplier" in layer["scalars"]:
            lines.append(f"float {p.lower()}_m(void) {{ return {p}_MULTIPLIER; }}")
    src = tmp_path / "check_sizes.c"
    src.write_text("\n".join(lines) + "\n")
    cmd = [cc, "-std=c99", "-Wall", "-Werror", "-c", str(src), "-o", str(tmp_path / "c.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_c_header_scalars_are_exact(exported: tuple[Path, dict]) -> None:
    folder, man = exported
    text = (folder / man["header"]["path"]).read_text()
    for layer in man["layers"]:
        for key, s in layer["scalars"].items():
            name = f"{layer['c_prefix']}_{key.upper()}"
            lit = re.search(rf"float {name} \w* ?= (\S+)f;", text)
            bits = re.search(rf"#define {name}_BITS (0x[0-9a-f]{{8}})u", text)
            assert lit and bits, name
            assert float.fromhex(lit.group(1)) == s["float"]
            assert bits.group(1) == s["bits"]


def test_onnx_test_data_folder(systolic_digits: Path, digits_dir: Path, tmp_path: Path) -> None:
    """An ONNX test-data folder is accepted; --samples takes its first rows."""
    from click.testing import CliRunner

    from systolic_sdk.cli.vectors_cmd import export_vectors

    out = tmp_path / "v"
    args = [str(systolic_digits), "--data", str(digits_dir / "test_data_set_0"), "-o", str(out),
            "--format", "npy", "--samples", "4", "-q"]  # fmt: skip
    result = CliRunner().invoke(export_vectors, args)
    assert result.exit_code == 0 and result.output == "", result.output
    man = json.loads((out / "manifest.json").read_text())
    from runtime_emulator.io import read_tensor_pb

    rows = read_tensor_pb(digits_dir / "test_data_set_0" / "input_0.pb")[1].shape[0]
    assert man["samples"] == min(4, rows)
    assert np.load(out / man["layers"][0]["files"][0]["path"]).shape[0] == min(4, rows)
