"""Run a suite against a backend ``run(model_path, inputs) -> outputs`` and compare with zero
tolerance: dtype, shape and every bit (floats bitwise)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from systolic_sdk.conformance.generate import ConformanceError
from systolic_sdk.conformance.suite import Suite, SuiteCase, load_suite, select_cases
from systolic_sdk.graph.io import write_bytes_atomic

BackendFn = Callable[[str, list[np.ndarray]], list[np.ndarray]]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_backend(spec: str) -> BackendFn:
    """The function named by ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION`` (or a
    built-in short name: ``emulator``, ``onnxruntime_lowered``)."""
    from systolic_sdk.conformance.runners import BUILTIN

    if spec in BUILTIN:
        return BUILTIN[spec]
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr.isidentifier():
        raise ConformanceError(
            f"--backend '{spec}': expected MODULE:FUNCTION, path/to/file.py:FUNCTION or a "
            f"built-in name ({', '.join(BUILTIN)})"
        )
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise ConformanceError(f"--backend '{spec}': {path}: no such file")
        name = "_conformance_backend_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()
        mspec = importlib.util.spec_from_file_location(name, path)
        if mspec is None or mspec.loader is None:
            raise ConformanceError(f"--backend '{spec}': {path}: not a Python file")
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001  (any import-time failure of user code)
            sys.modules.pop(name, None)
            raise ConformanceError(
                f"--backend '{spec}': importing {path} failed: {_one_line(exc)}"
            ) from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:  # noqa: BLE001
            raise ConformanceError(
                f"--backend '{spec}': cannot import module '{where}': {_one_line(exc)}"
            ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConformanceError(f"--backend '{spec}': module '{where}' has no '{attr}'")
    if not callable(fn):
        raise ConformanceError(f"--backend '{spec}': '{attr}' is not callable")
    return fn


@dataclass
class CaseResult:
    """The outcome of one case: ``status`` is pass, fail (a mismatch) or error (raised)."""

    name: str
    op: str
    status: str
    message: str = ""
    seconds: float = 0.0
    tags: list[str] = field(default_factory=list)


@dataclass
class SuiteReport:
    """All results of one run."""

    backend: str
    results: list[CaseResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return all(r.status == "pass" for r in self.results)

    def shared_failure_tags(self) -> list[str]:
        """Tags carried by every failing case (a hint at the cause: all failures tagged
        ``tie`` point at the rounding rule); cases whose backend raised are not failures."""
        bad = [set(r.tags) for r in self.results if r.status == "fail"]
        return sorted(set.intersection(*bad)) if bad else []

    def summary(self) -> str:
        n = len(self.results)
        return (
            f"{n} case{'s' if n != 1 else ''}: {self.count('pass')} passed, "
            f"{self.count('fail')} failed, {self.count('error')} "
            f"error{'s' if self.count('error') != 1 else ''} (backend {self.backend})"
        )


def _bits(a: np.ndarray) -> np.ndarray:
    kinds = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
    a = np.ascontiguousarray(a)
    if a.dtype.kind in "biuf" and a.dtype.itemsize in kinds:
        return a.view(kinds[a.dtype.itemsize])
    return a


def _show(a: np.ndarray, idx: tuple[int, ...]) -> str:
    """One element: the integer, or the float with its bit pattern."""
    v = a[idx]
    if a.dtype.kind == "f":
        bits = int(_bits(np.asarray(v, dtype=a.dtype).reshape(1))[0])
        return f"{v.item()!r} (0x{bits:0{2 * a.dtype.itemsize}x})"
    return repr(v.item())


def compare_outputs(expected: Sequence[tuple[str, np.ndarray]], got: Any) -> str | None:
    """None when ``got`` equals ``expected`` exactly, else one line naming the first
    difference: count, dtype, shape, or the first differing index with both values."""
    if not isinstance(got, (list, tuple)):
        return f"the backend returned {type(got).__name__}, expected a list of arrays"
    if len(got) != len(expected):
        return f"the backend returned {len(got)} outputs, expected {len(expected)}"
    for (name, want), have in zip(expected, got, strict=True):
        if not isinstance(have, np.ndarray):
            return f"output '{name}': got {type(have).__name__}, expected a numpy array"
        if have.dtype != want.dtype:
            return f"output '{name}': dtype {have.dtype}, expected {want.dtype}"
        if have.shape != want.shape:
            return f"output '{name}': shape {list(have.shape)}, expected {list(want.shape)}"
        neq = _bits(have) != _bits(want)
        if np.any(neq):
            flat = int(np.argmax(neq.reshape(-1)))
            idx = tuple(int(i) for i in np.unravel_index(flat, want.shape))
            return (
                f"output '{name}': {int(np.count_nonzero(neq))} of {want.size} elements "
                f"differ; first at index {list(idx)}: got {_show(have, idx)}, "
                f"expected {_show(want, idx)}"
            )
    return None


def run_case(case: SuiteCase, backend: BackendFn) -> CaseResult:
    """Run one case; a backend that raises gives status "error", never an exception."""
    expected = case.load_expected()
    inputs = case.load_inputs()
    start = time.perf_counter()
    try:
        got = backend(str(case.model), inputs)
    except Exception as exc:  # noqa: BLE001  (the backend under test may raise anything)
        seconds = time.perf_counter() - start
        message = f"backend raised {_one_line(exc)}"
        return CaseResult(case.name, case.op, "error", message, seconds, list(case.tags))
    seconds = time.perf_counter() - start
    problem = compare_outputs(expected, got)
    status = "pass" if problem is None else "fail"
    return CaseResult(case.name, case.op, status, problem or "", seconds, list(case.tags))


def run_suite(
    suite: str | os.PathLike[str] | Suite,
    backend: BackendFn | str,
    patterns: Sequence[str] | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> SuiteReport:
    """Run the cases of ``suite`` selected by ``patterns`` (see ``select_cases``) on
    ``backend`` (a function or a ``--backend`` spec)."""
    loaded = suite if isinstance(suite, Suite) else load_suite(suite)
    label = backend if isinstance(backend, str) else getattr(backend, "__name__", "backend")
    fn = load_backend(backend) if isinstance(backend, str) else backend
    report = SuiteReport(str(label))
    for case in select_cases(loaded.cases, patterns):
        result = run_case(case, fn)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report


def junit_xml(report: SuiteReport, suite: Suite) -> bytes:
    """The report as JUnit XML: one testsuite, one testcase per case, ``failure`` for a
    mismatch and ``error`` for a backend that raised."""
    total = sum(r.seconds for r in report.results)
    counts = {
        "tests": str(len(report.results)),
        "failures": str(report.count("fail")),
        "errors": str(report.count("error")),
        "skipped": "0",
        "time": f"{total:.6f}",
    }
    root = ET.Element("testsuites", name="systolic-conformance", **counts)
    ts = ET.SubElement(root, "testsuite", name="systolic-conformance", **counts)
    props = ET.SubElement(ts, "properties")
    for key, value in (
        ("backend", report.backend),
        ("suite", str(suite.root)),
        ("seed", str(suite.manifest.get("seed", ""))),
        ("sdk_version", str(suite.manifest.get("sdk_version", ""))),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    for r in report.results:
        tc = ET.SubElement(
            ts, "testcase", classname=f"conformance.{r.op}", name=r.name, time=f"{r.seconds:.6f}"
        )
        if r.status == "fail":
            ET.SubElement(tc, "failure", message=r.message, type="mismatch").text = r.message
        elif r.status == "error":
            ET.SubElement(tc, "error", message=r.message, type="backend-error").text = r.message
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: str | os.PathLike[str], report: SuiteReport, suite: Suite) -> None:
    """Write :func:`junit_xml` atomically."""
    write_bytes_atomic(Path(path), junit_xml(report, suite))
