"""Export the golden vectors of a Systolic graph into a folder, atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime_emulator.io import load_input_sets
from systolic_sdk.graph.io import atomic_dir, check_output_dir, load_model
from systolic_sdk.vectors.extract import LayerVectors, VectorError, check_systolic, extract_layers
from systolic_sdk.vectors.manifest import (
    MANIFEST_NAME,
    layer_entry,
    manifest,
    sha256_hex,
)
from systolic_sdk.vectors.writers import (
    FORMATS,
    HEADER_NAME,
    c_header,
    c_ident,
    hex_bytes,
    layer_prefix,
    npy_bytes,
    pb_bytes,
)

#: File formats written per tensor (the C header is one file for all layers).
_TENSOR_WRITERS = {"pb": "pb", "npy": "npy", "hex": "hex"}


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """Formats from ``pb,npy,...`` (each at most once, in the canonical order)."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip().lower() for p in parts if p.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise VectorError(f"unknown format '{unknown[0]}' (choose from {', '.join(FORMATS)})")
    if not names:
        raise VectorError(f"no format given (choose from {', '.join(FORMATS)})")
    return [f for f in FORMATS if f in names]


def _encode(fmt: str, arr: np.ndarray, name: str) -> bytes:
    if fmt == "pb":
        return pb_bytes(arr, name)
    if fmt == "npy":
        return npy_bytes(arr)
    return hex_bytes(arr)


def _prepare_out(out: Path, force: bool, *inputs: str | os.PathLike[str]) -> None:
    """``out`` may be written: a new or empty folder, or (``force``) an earlier export
    (a folder holding a vectors manifest); never the current folder or one that holds,
    or lies inside, an input."""
    check_output_dir(out, *inputs)
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise VectorError(f"{out}: folder exists and is not empty (use --force to replace it)")
        if not (out / MANIFEST_NAME).is_file():
            raise VectorError(
                f"{out}: --force replaces an earlier export only; this folder has no "
                f"{MANIFEST_NAME}"
            )
    if not out.resolve().parent.is_dir():
        raise VectorError(f"{out.parent}: no such folder")


def _load_feeds(
    data: str | os.PathLike[str], input_names: list[str], output_names: list[str], samples: int
) -> dict:
    sets = load_input_sets(data, input_names, output_names)
    feeds: dict[str, np.ndarray] = {}
    for name in input_names:
        arrays = [np.asarray(s.feeds[name]) for s in sets]
        try:
            joined = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        except ValueError:
            raise VectorError(f"{data}: input sets for '{name}' differ in shape") from None
        if joined.ndim == 0 or joined.shape[0] < 1:
            raise VectorError(f"{data}: input '{name}' holds no sample")
        feeds[name] = joined[:samples]
    return feeds


def _write(tmp: Path, rel: str, data: bytes, files: list[dict], **info: object) -> None:
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    files.append({**info, "path": rel, "sha256": sha256_hex(data), "bytes": len(data)})


def _layer_files(tmp: Path, layer: LayerVectors, formats: list[str]) -> list[dict]:
    folder = f"layers/{layer.index:03d}_{c_ident(layer.name).lower()}"
    files: list[dict] = []
    items = list(layer.arrays.items()) + [(k, np.float32(v)) for k, v in layer.scalars.items()]
    for fmt in formats:
        if fmt not in _TENSOR_WRITERS:
            continue
        for key, arr in items:
            arr = np.asarray(arr)
            _write(tmp, f"{folder}/{key}.{fmt}", _encode(fmt, arr, key), files, tensor=key,
                   format=fmt, dtype=arr.dtype.name, shape=list(arr.shape))  # fmt: skip
    return files


def export_vectors(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    formats: Sequence[str] = FORMATS,
    samples: int = 1,
    force: bool = False,
) -> dict:
    """Write the golden vectors of every accelerator layer to ``out``; return the manifest.

    Everything is written into a temporary folder beside ``out`` and renamed at the end:
    on any error nothing is left behind.
    """
    formats = parse_formats(formats)
    if samples < 1:
        raise VectorError(f"--samples must be at least 1, got {samples}")
    out = Path(out)
    _prepare_out(out, force, model_path, data)
    model_bytes = Path(model_path).read_bytes() if Path(model_path).is_file() else None
    model = load_model(model_path)
    check_systolic(model, str(model_path))
    init = {t.name for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input if i.name not in init]
    output_names = [o.name for o in model.graph.output]
    feeds = _load_feeds(data, input_names, output_names, samples)
    layers, graph_outputs = extract_layers(model, feeds)
    model_sha = sha256_hex(model_bytes if model_bytes is not None else model.SerializeToString())
    n = int(next(iter(feeds.values())).shape[0])
    with atomic_dir(out) as tmp:
        entries = [
            layer_entry(lv, _layer_files(tmp, lv, formats), layer_prefix(lv)) for lv in layers
        ]
        out_entries = []
        for name, arr in graph_outputs.items():
            files: list[dict] = []
            for fmt in ("pb", "npy"):
                if fmt in formats:
                    _write(tmp, f"graph_outputs/{c_ident(name).lower()}.{fmt}",
                           _encode(fmt, arr, name), files, tensor=name, format=fmt)  # fmt: skip
            out_entries.append({"name": name, "shape": list(arr.shape), "dtype": arr.dtype.name,
                                "files": files})  # fmt: skip
        header = None
        if "c-header" in formats:
            files = []
            _write(tmp, HEADER_NAME, c_header(layers, model_sha), files, format="c-header")
            header = files[0]
        man = manifest(model_sha, n, formats, entries, out_entries, header)
        (tmp / MANIFEST_NAME).write_text(json.dumps(man, indent=2) + "\n")
    return man
