"""``generate_suite``: write a conformance suite (ONNX test-data layout plus a manifest).

Every case is drawn from its own random stream (the seed, the op, the corner and the case
number), so a suite is byte-for-byte reproducible and filtering ops leaves the other cases
unchanged. A draw is kept only when its trace proves the corner (tags) and its tie status;
its expected output is the emulator's (``runtime_emulator.run``), which must agree with the
step-wise datapath account bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import numpy_helper

import runtime_emulator
from systolic_sdk import __version__
from systolic_sdk.conformance.cases import OPS, Case, build_model, check_model
from systolic_sdk.conformance.corners import CORNERS, OP_NAMES, Corner
from systolic_sdk.conformance.reference import trace_case
from systolic_sdk.conformance.tags import derive_tags, has_any_tie
from systolic_sdk.conformance.ties import (
    half_away_exact_policy,
    half_away_f32_policy,
    half_away_policy,
    rne_policy,
)
from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import atomic_dir

MANIFEST_NAME = "manifest.json"
FORMAT = "systolic-sdk-conformance"
FORMAT_VERSION = 1
MAX_DRAWS = 200

POLICIES = {
    "rne": rne_policy,
    "away": half_away_policy,
    "away-exact": half_away_exact_policy,
    "away-f32": half_away_f32_policy,
}


class ConformanceError(SdkError):
    """A suite cannot be generated, read or run as asked."""


def select_ops(ops: Sequence[str] | None) -> list[str]:
    """The op names to generate, in table order (case-insensitive; all when None or empty)."""
    if not ops:
        return list(OP_NAMES)
    by_lower = {name.lower(): name for name in OP_NAMES}
    chosen = []
    for op in ops:
        name = by_lower.get(op.strip().lower())
        if name is None:
            raise ConformanceError(f"--ops: unknown op '{op}' (choose from {', '.join(OP_NAMES)})")
        chosen.append(name)
    return [name for name in OP_NAMES if name in chosen]


def case_name(corner: Corner, index: int) -> str:
    """The case's folder name, e.g. ``qlinearconv-tie-m0.5-0``."""
    return f"{corner.op.lower()}-{corner.name}-{index}"


def _rng(seed: int, corner: Corner, index: int) -> np.random.Generator:
    key = (zlib.crc32(corner.op.encode()), zlib.crc32(corner.name.encode()), index)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def draw_case(corner: Corner, seed: int, index: int) -> tuple[Case, list[str], np.ndarray]:
    """``(case, tags, expected output)`` of one case: drawn until its trace proves the
    corner; the expected output is the emulator's, checked against the trace."""
    rng = _rng(seed, corner, index)
    for _ in range(MAX_DRAWS):
        case = corner.recipe(rng)
        case.corner = corner.name
        case.description = corner.description
        traces = {k: trace_case(case, p) for k, p in POLICIES.items()}
        tags = derive_tags(case, traces)
        if not set(corner.requires) <= set(tags):
            continue
        if corner.tie != ("tie" in tags):
            continue
        if not corner.tie and has_any_tie(traces["rne"]):
            continue
        return case, tags, traces["rne"].output
    raise RuntimeError(
        f"{case_name(corner, index)}: no draw of {MAX_DRAWS} met the corner "
        f"{list(corner.requires)} (tie={corner.tie})"
    )


def _emulate(case: Case, name: str, stepwise: np.ndarray) -> tuple[Any, np.ndarray]:
    model = build_model(case, stepwise, name)
    check_model(model)
    got = runtime_emulator.run(model, dict(case.inputs))[case.output]
    if got.dtype != stepwise.dtype or got.shape != stepwise.shape:
        raise ConformanceError(
            f"case {name}: the emulator returned {got.dtype} {list(got.shape)}, the datapath "
            f"steps give {stepwise.dtype} {list(stepwise.shape)}"
        )
    diff = _first_difference(got, stepwise)
    if diff is not None:
        raise ConformanceError(
            f"case {name}: the emulator's output differs from the datapath steps at index "
            f"{diff} ({got[diff]} vs {stepwise[diff]}): a bug in one of them"
        )
    return model, got


def _first_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, ...] | None:
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    neq = np.ascontiguousarray(a).view(bits) != np.ascontiguousarray(b).view(bits)
    if not np.any(neq):
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(neq)), a.shape))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _f32_entry(v: float) -> dict[str, Any]:
    bits = int(np.array(v, dtype=np.float32).view(np.uint32))
    return {"value": float(np.float32(v)), "f32_bits": f"0x{bits:08x}"}


def _tensor_entry(name: str, arr: np.ndarray, path: str) -> dict[str, Any]:
    return {"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "file": path}


def _write_case(
    root: Path, name: str, case: Case, tags: list[str], model: Any, output: np.ndarray
) -> dict[str, Any]:
    files: dict[str, bytes] = {f"{name}/model.onnx": model.SerializeToString()}
    inputs, outputs = [], []
    for k, (iname, arr) in enumerate(case.inputs.items()):
        path = f"{name}/test_data_set_0/input_{k}.pb"
        files[path] = numpy_helper.from_array(arr, iname).SerializeToString()
        inputs.append(_tensor_entry(iname, arr, path))
    path = f"{name}/test_data_set_0/output_0.pb"
    files[path] = numpy_helper.from_array(output, case.output).SerializeToString()
    outputs.append(_tensor_entry(case.output, output, path))
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    op_type, domain = OPS[case.op]
    return {
        "name": name,
        "op": case.op,
        "op_type": op_type,
        "domain": domain,
        "corner": case.corner,
        "description": case.description,
        "tags": tags,
        "multipliers": [_f32_entry(m) for m in case.multipliers],
        "model": f"{name}/model.onnx",
        "inputs": inputs,
        "outputs": outputs,
        "files": [{"path": rel, "sha256": _sha256(data)} for rel, data in files.items()],
    }


def _is_suite(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _tag_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        for tag in entry["tags"]:
            counts[tag] = counts.get(tag, 0) + 1
    return dict(sorted(counts.items()))


def _prepare_out(out: Path, force: bool) -> None:
    """An output folder must be new or empty; ``force`` replaces an existing suite only (a
    folder without a suite manifest is never deleted)."""
    if out.exists() and not out.is_dir():
        raise ConformanceError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConformanceError(f"{out}: folder is not empty (use --force to replace a suite)")
        if not _is_suite(out):
            raise ConformanceError(
                f"{out}: folder is not empty and holds no conformance suite; refusing to replace it"
            )
    if not out.resolve().parent.is_dir():
        raise ConformanceError(f"{out}: parent folder {out.resolve().parent} does not exist")


def generate_suite(
    out: str | os.PathLike[str],
    ops: Sequence[str] | None = None,
    count: int = 1,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write a suite of ``count`` cases per (op, corner) of ``ops`` to ``out``; return the
    manifest. Written into a temporary sibling folder and renamed: all or nothing."""
    if count < 1:
        raise ConformanceError(f"--count must be at least 1, got {count}")
    if seed < 0:
        raise ConformanceError(f"--seed must be a non-negative integer, got {seed}")
    chosen = select_ops(ops)
    out = Path(out)
    _prepare_out(out, force)
    with atomic_dir(out) as tmp:
        entries = []
        for corner in (c for c in CORNERS if c.op in chosen):
            for index in range(count):
                name = case_name(corner, index)
                case, tags, stepwise = draw_case(corner, seed, index)
                model, expected = _emulate(case, name, stepwise)
                entries.append(_write_case(tmp, name, case, tags, model, expected))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sdk_version": __version__,
            "generator": "systolic-quantize conformance generate",
            "seed": seed,
            "count": count,
            "ops": chosen,
            "expected_outputs": "runtime_emulator (bit-exact Systolic datapath), target systolic",
            "comparison": "exact: dtype, shape and every bit",
            "multipliers": "convs and QLinearMatMul: M = f32(f32(s_x*s_w)/s_y); QLinearAdd: "
            "f32(s_a/s_c), f32(s_b/s_c); QuantizeLinear, DequantizeLinear: the scale",
            "tag_counts": _tag_counts(entries),
            "cases": entries,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
