"""Reading a conformance suite: the manifest, its cases and their files (sha256-checked)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from runtime_emulator.io import read_tensor_pb
from systolic_sdk.conformance.generate import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ConformanceError,
)


@dataclass
class SuiteCase:
    """One case of a suite on disk."""

    name: str
    op: str
    tags: list[str]
    model: Path
    inputs: list[Path]
    outputs: list[tuple[str, Path]]

    def load_inputs(self) -> list[np.ndarray]:
        return [read_tensor_pb(p)[1] for p in self.inputs]

    def load_expected(self) -> list[tuple[str, np.ndarray]]:
        return [(name, read_tensor_pb(p)[1]) for name, p in self.outputs]


@dataclass
class Suite:
    """A suite folder and its manifest."""

    root: Path
    manifest: dict[str, Any]
    cases: list[SuiteCase]


def _rel(root: Path, where: str, value: Any) -> Path:
    """A file path of the manifest, which must stay inside the suite folder."""
    if not isinstance(value, str) or not value:
        raise ConformanceError(f"{root / MANIFEST_NAME}: {where}: expected a relative file path")
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts or Path(value).is_absolute():
        raise ConformanceError(
            f"{root / MANIFEST_NAME}: {where}: path '{value}' leaves the suite folder"
        )
    return root.joinpath(*pure.parts)


def _field(root: Path, entry: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get(key), kind):
        raise ConformanceError(
            f"{root / MANIFEST_NAME}: {where}: missing or malformed field '{key}'"
        )
    return entry[key]


def load_suite(path: str | os.PathLike[str], verify: bool = True) -> Suite:
    """Read and check a suite: the manifest's format and fields, every listed file present
    and (with ``verify``) matching its sha256."""
    root = Path(path)
    if not root.exists():
        raise ConformanceError(f"{root}: no such suite folder")
    if not root.is_dir():
        raise ConformanceError(f"{root}: is not a folder (expected a suite folder)")
    man_path = root / MANIFEST_NAME
    if not man_path.is_file():
        raise ConformanceError(f"{root}: no {MANIFEST_NAME} (not a conformance suite)")
    try:
        manifest = json.loads(man_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConformanceError(f"{man_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConformanceError(f"{man_path}: not a {FORMAT} manifest (field 'format')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConformanceError(
            f"{man_path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this SDK reads version {FORMAT_VERSION})"
        )
    entries = _field(root, manifest, "cases", list, "manifest")
    cases, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"cases[{i}]"
        name = _field(root, entry, "name", str, where)
        where = f"case '{name}'"
        if name in seen:
            raise ConformanceError(f"{man_path}: {where} is listed twice")
        seen.add(name)
        op = _field(root, entry, "op", str, where)
        tags = _field(root, entry, "tags", list, where)
        model = _rel(root, f"{where} model", _field(root, entry, "model", str, where))
        inputs = [
            _rel(root, f"{where} input", _field(root, t, "file", str, f"{where} input"))
            for t in _field(root, entry, "inputs", list, where)
        ]
        outputs = [
            (
                _field(root, t, "name", str, f"{where} output"),
                _rel(root, f"{where} output", _field(root, t, "file", str, f"{where} output")),
            )
            for t in _field(root, entry, "outputs", list, where)
        ]
        if not outputs:
            raise ConformanceError(f"{man_path}: {where} lists no outputs")
        for f in _field(root, entry, "files", list, where):
            file = _rel(root, f"{where} file", _field(root, f, "path", str, f"{where} file"))
            digest = _field(root, f, "sha256", str, f"{where} file")
            if not file.is_file():
                raise ConformanceError(f"{file}: missing (listed in {MANIFEST_NAME})")
            if verify and hashlib.sha256(file.read_bytes()).hexdigest() != digest:
                raise ConformanceError(
                    f"{file}: sha256 differs from {MANIFEST_NAME} (modified or corrupt)"
                )
        for p in [model, *inputs, *(p for _, p in outputs)]:
            if not p.is_file():
                raise ConformanceError(f"{p}: missing (listed in {MANIFEST_NAME})")
        cases.append(SuiteCase(name, op, [str(t) for t in tags], model, inputs, outputs))
    return Suite(root, manifest, cases)


def _matches(pattern: str, case: SuiteCase) -> bool:
    p = pattern.lower()
    fields = [case.name.lower(), case.op.lower(), *(t.lower() for t in case.tags)]
    if any(ch in p for ch in "*?["):
        return any(fnmatch.fnmatchcase(f, p) for f in fields)
    return p in case.name.lower() or any(p == f for f in fields[1:])


def select_cases(cases: Sequence[SuiteCase], patterns: Sequence[str] | None) -> list[SuiteCase]:
    """Cases matched by any of ``patterns`` (all when none): a pattern is a substring of the
    case name, or equal to its op or one of its tags, case-insensitive; with ``* ? [`` it is
    a glob matched against the name, the op and each tag."""
    if not patterns:
        return list(cases)
    chosen = [c for c in cases if any(_matches(p, c) for p in patterns)]
    if not chosen:
        raise ConformanceError(f"-k {' '.join(patterns)!r} selects no case of the suite")
    return chosen
