"""Inputs and outputs of emulator runs: ONNX test-data folders, .npy/.npz, traces.

Accepted inputs (:func:`load_input_sets`):

- an ONNX test-data folder: a folder holding ``test_data_set_N/`` subfolders (each
  one input set; ``output_K.pb`` beside the inputs are the expected outputs);
- a folder of ``input_K.pb`` (one set; ``output_K.pb`` beside them are expected);
- one ``.pb`` TensorProto, or one ``.npy`` array, for a single-input model;
- an ``.npz`` keyed by input name (a single-input model also accepts a single array).

A TensorProto's ``name`` maps it to the graph input of that name; unnamed
``input_K.pb`` files fill the remaining graph inputs in order. Every error names the
file and the problem. Outputs and traces are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import write_bytes_atomic


class InputError(SdkError):
    """An input file or folder cannot be read or does not fit the model."""


@dataclass
class InputSet:
    """One set of feeds, and the expected outputs that came with it (if any)."""

    name: str
    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray] | None
    source: Path


_NUMBERED = re.compile(r"^(input|output)_(\d+)\.pb$")
_SET = re.compile(r"^test_data_set_(\d+)$")


def read_tensor_pb(path: str | os.PathLike[str]) -> tuple[str, np.ndarray]:
    """A serialized TensorProto: ``(name, array)``."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(data)
        arr = numpy_helper.to_array(tensor)
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"{p}: not a serialized ONNX TensorProto ({exc})") from None
    return tensor.name, np.asarray(arr)


def _numbered(folder: Path, kind: str) -> list[Path]:
    found = []
    for f in folder.iterdir():
        m = _NUMBERED.match(f.name)
        if m and m.group(1) == kind and f.is_file():
            found.append((int(m.group(2)), f))
    return [f for _, f in sorted(found)]


def _map_tensors(files: Sequence[Path], names: Sequence[str], kind: str) -> dict[str, np.ndarray]:
    """Named tensors go to the graph input/output of that name; the others fill the
    remaining names in order (``input_K.pb`` is the K-th when none is named)."""
    loaded = [(f, *read_tensor_pb(f)) for f in files]
    out: dict[str, np.ndarray] = {}
    for f, name, arr in loaded:
        if name in names:
            if name in out:
                raise InputError(f"{f}: a second tensor for {kind} '{name}'")
            out[name] = arr
    free = [n for n in names if n not in out]
    for f, name, arr in loaded:
        if name in names:
            continue
        if not free:
            raise InputError(
                f"{f}: the model has {len(names)} {kind}(s) "
                f"({', '.join(names)}), no {kind} left for this file"
            )
        out[free.pop(0)] = arr
    return out


def _pb_folder(folder: Path, input_names: Sequence[str], output_names: Sequence[str]) -> InputSet:
    inputs = _numbered(folder, "input")
    feeds = _map_tensors(inputs, input_names, "input")
    outputs = _numbered(folder, "output")
    expected = _map_tensors(outputs, output_names, "output") if outputs else None
    return InputSet(folder.name, feeds, expected, folder)


def load_input_sets(
    path: str | os.PathLike[str],
    input_names: Sequence[str],
    output_names: Sequence[str] = (),
) -> list[InputSet]:
    """Read input sets from ``path`` for a model with these graph input/output names."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        if _numbered(p, "input"):
            return [_pb_folder(p, input_names, output_names)]
        sets = sorted(
            (int(m.group(1)), d)
            for d in p.iterdir()
            if d.is_dir() and (m := _SET.match(d.name)) and _numbered(d, "input")
        )
        if not sets:
            raise InputError(
                f"{p}: no input_K.pb files and no test_data_set_N folders holding them"
            )
        return [_pb_folder(d, input_names, output_names) for _, d in sets]
    suffix = p.suffix.lower()
    if suffix == ".pb":
        _, arr = read_tensor_pb(p)
        return [InputSet(p.stem, {_single(p, input_names): arr}, None, p)]
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{p}: not a readable .npy array ({exc})") from None
        return [InputSet(p.stem, {_single(p, input_names): arr}, None, p)]
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise InputError(f"{p}: not a readable .npz archive ({exc})") from None
        return [InputSet(p.stem, _npz_feeds(p, arrays, input_names), None, p)]
    raise InputError(
        f"{p}: unknown input format (expected a test-data folder, input_K.pb, .npy or .npz)"
    )


def _single(p: Path, input_names: Sequence[str]) -> str:
    if len(input_names) != 1:
        raise InputError(
            f"{p}: one array given but the model has {len(input_names)} inputs "
            f"({', '.join(input_names)}); use an .npz keyed by input name"
        )
    return input_names[0]


def _npz_feeds(
    p: Path, arrays: Mapping[str, np.ndarray], input_names: Sequence[str]
) -> dict[str, np.ndarray]:
    if len(input_names) == 1 and len(arrays) == 1:
        return {input_names[0]: next(iter(arrays.values()))}
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise InputError(
            f"{p}: no array for input '{missing[0]}' (keys: {', '.join(arrays) or 'none'})"
        )
    return {n: arrays[n] for n in input_names}


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz archive of ``arrays`` as bytes."""
    buf = io.BytesIO()
    np.savez(buf, **dict(arrays))
    return buf.getvalue()


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """An output folder: created if its parent exists; an existing file is refused."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SdkError(f"{p}: exists and is not a folder")
    if not p.exists():
        if not p.resolve().parent.is_dir():
            raise SdkError(f"{p}: parent folder {p.resolve().parent} does not exist")
        p.mkdir()
    return p


def write_outputs(
    out_dir: str | os.PathLike[str],
    outputs: Mapping[str, np.ndarray],
    output_names: Sequence[str],
) -> list[Path]:
    """Write ``output_K.pb`` (graph output order) and ``outputs.npz``; the files written."""
    d = prepare_dir(out_dir)
    written: list[Path] = []
    for k, name in enumerate(output_names):
        target = d / f"output_{k}.pb"
        write_bytes_atomic(target, numpy_helper.from_array(outputs[name], name).SerializeToString())
        written.append(target)
    target = d / "outputs.npz"
    write_bytes_atomic(target, npz_bytes({n: outputs[n] for n in output_names}))
    written.append(target)
    return written


def write_trace(
    out_dir: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    nodes: Iterable[Mapping[str, object]] = (),
) -> list[Path]:
    """Write every traced tensor to ``tensors.npz`` (keyed by tensor name) and the
    executed nodes (name, op_type, domain, inputs, outputs, backend) to ``nodes.json``."""
    d = prepare_dir(out_dir)
    target = d / "tensors.npz"
    fd, tmp = tempfile.mkstemp(prefix=".tensors.", suffix=".npz.tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **dict(tensors))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    index = {
        "tensors": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in tensors.items()},
        "nodes": list(nodes),
    }
    meta = d / "nodes.json"
    write_bytes_atomic(meta, (json.dumps(index, indent=1) + "\n").encode())
    return [target, meta]


def compare_outputs(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> list[str]:
    """Bit-exact comparison: one line per output that differs (empty when all match)."""
    problems: list[str] = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"output '{name}': not produced")
            continue
        if got.shape != want.shape:
            problems.append(
                f"output '{name}': shape {list(got.shape)} != expected {list(want.shape)}"
            )
            continue
        if got.dtype != want.dtype:
            problems.append(f"output '{name}': dtype {got.dtype} != expected {want.dtype}")
            continue
        same = np.array_equal(got, want, equal_nan=got.dtype.kind in "fc")
        if not same:
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            n_bad = int(np.count_nonzero(got != want))
            problems.append(
                f"output '{name}': {n_bad} of {got.size} elements differ "
                f"(max |diff| {float(np.nanmax(diff)):.6g})"
            )
    return problems
