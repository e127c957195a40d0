"""Running a suite: the built-in runners pass everything, wrong backends fail exactly the
cases they should, JUnit XML, and the ``conformance run`` command line."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from systolic_sdk.cli.conformance_cmd import conformance
from systolic_sdk.conformance import generate_suite, load_suite, run_suite
from systolic_sdk.conformance.runners import emulator, onnxruntime_lowered

HERE = Path(__file__).resolve().parent
BACKENDS = HERE / "conformance_backends.py"


def _invoke(*args: str):
    return CliRunner().invoke(conformance, [str(a) for a in args])


def _failed(report) -> set[str]:
    return {r.name for r in report.results if r.status != "pass"}


@pytest.mark.parametrize("runner", [emulator, onnxruntime_lowered], ids=lambda f: f.__name__)
def test_builtin_runners_pass_every_case(suite_dir: Path, manifest: dict, runner) -> None:
    # Every case, including the fused-pool padding rules, passes in onnxruntime on the
    # lowering: no exceptions are needed.
    report = run_suite(suite_dir, runner)
    assert len(report.results) == len(manifest["cases"]) > 60
    assert report.ok, [(r.name, r.message) for r in report.results if r.status != "pass"]


def test_half_away_from_zero_fails_exactly_the_tie_cases(suite_dir: Path, manifest: dict) -> None:
    report = run_suite(suite_dir, f"{BACKENDS}:half_away_from_zero")
    tie = {c["name"] for c in manifest["cases"] if "tie" in c["tags"]}
    assert _failed(report) == tie
    assert all(r.status == "fail" for r in report.results if r.name in tie)
    ties = [c for c in manifest["cases"] if "tie" in c["tags"]]
    assert len({c["op"] for c in ties}) >= 5
    multipliers = {m["value"] for c in ties for m in c["multipliers"][:1]}
    assert {0.5, 0.25, 1 / 32, 0.375} <= multipliers
    assert any("tie-f32-rounded" in c["tags"] for c in ties)
    assert any("tie-exact" in c["tags"] for c in ties)
    assert any("maxpool-fusion" in c["tags"] for c in ties)
    assert any("relu" in c["tags"] for c in ties)


def test_failure_names_first_index_and_values(suite_dir: Path) -> None:
    report = run_suite(suite_dir, f"{BACKENDS}:half_away_from_zero", ["quantizelinear-tie"])
    assert report.results and all(r.status == "fail" for r in report.results)
    msg = report.results[0].message
    assert re.search(r"first at index \[\d+, \d+, \d+, \d+\]: got -?\d+, expected -?\d+$", msg)
    report = run_suite(suite_dir, f"{BACKENDS}:one_ulp_off", ["dequantizelinear"])
    msg = report.results[0].message
    assert re.search(r"got \S+ \(0x[0-9a-f]{8}\), expected \S+ \(0x[0-9a-f]{8}\)$", msg), msg


@pytest.mark.parametrize(
    ("backend", "op", "words"),
    [
        ("wrong_shape", "QLinearMatMul", ("shape",)),
        ("wrong_dtype", "QLinearAdd", ("dtype int16, expected int8",)),
        ("one_ulp_off", "DequantizeLinear", ("first at index",)),
    ],
)
def test_wrong_shape_dtype_or_bits_fail_those_cases(
    suite_dir: Path, manifest: dict, backend: str, op: str, words: tuple[str, ...]
) -> None:
    report = run_suite(suite_dir, f"{BACKENDS}:{backend}")
    expected = {c["name"] for c in manifest["cases"] if c["op"] == op}
    assert expected and _failed(report) == expected
    for r in report.results:
        if r.name in expected:
            assert r.status == "fail" and all(w in r.message for w in words), r.message


def test_raising_backend_marks_cases_errored(suite_dir: Path, manifest: dict, tmp_path) -> None:
    relu = {c["name"] for c in manifest["cases"] if c["op"] == "QLinearRelu"}
    junit = tmp_path / "report.xml"
    result = _invoke("run", suite_dir, "--backend", f"{BACKENDS}:raises_on_relu", "--junit", junit)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("ERROR")]
    assert {line.split()[1].rstrip(":") for line in errors} == relu
    assert all("RuntimeError: QLinearRelu is not supported" in line for line in errors)
    assert f"0 failed, {len(relu)} errors" in result.output
    root = ET.parse(junit).getroot()
    assert root.find("testsuite").get("errors") == str(len(relu))
    assert {tc.get("name") for tc in root.iter("testcase") if tc.find("error") is not None} == relu


def test_non_list_result_fails(suite_dir: Path) -> None:
    report = run_suite(suite_dir, f"{BACKENDS}:returns_dict", ["qlinearrelu"])
    assert report.results and all(r.status == "fail" for r in report.results)
    assert "expected a list of arrays" in report.results[0].message


def test_junit_xml_counts(suite_dir: Path, manifest: dict, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    backend = "tests/conformance/conformance_backends.py:half_away_from_zero"
    result = CliRunner().invoke(
        conformance, ["run", str(suite_dir), "--backend", str(HERE.parent.parent / backend),
                      "--junit", str(junit), "-q"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    tie = {c["name"] for c in manifest["cases"] if "tie" in c["tags"]}
    root = ET.parse(junit).getroot()
    ts = root.find("testsuite")
    assert ts.get("tests") == str(len(manifest["cases"]))
    assert ts.get("failures") == str(len(tie)) and ts.get("errors") == "0"
    cases = list(ts.iter("testcase"))
    assert len(cases) == len(manifest["cases"])
    failed = {tc.get("name") for tc in cases if tc.find("failure") is not None}
    assert failed == tie
    assert all(tc.get("classname").startswith("conformance.") for tc in cases)
    # -q prints failures and the summary only
    lines = result.output.strip().splitlines()
    assert len(lines) == len(tie) + 2
    assert all(line.startswith("FAIL ") and "tie" in line.split()[2] for line in lines[:-2])
    assert lines[-2].startswith(f"{len(manifest['cases'])} cases")
    assert lines[-1].startswith("every failing case is tagged: ")
    assert "tie" in lines[-1].split(": ")[1].split(", ")


def test_cli_run_passes_and_selects(suite_dir: Path, manifest: dict) -> None:
    result = _invoke("run", suite_dir, "--backend", "systolic_sdk.conformance.runners:emulator")
    assert result.exit_code == 0, result.output
    n = len(manifest["cases"])
    assert result.output.count("PASS ") == n
    assert f"{n} cases: {n} passed, 0 failed, 0 errors" in result.output
    result = _invoke("run", suite_dir, "--backend", "onnxruntime_lowered", "-k", "tie",
                     "-k", "QLinearRelu")  # fmt: skip
    assert result.exit_code == 0, result.output
    chosen = [c for c in manifest["cases"] if "tie" in c["name"] or c["op"] == "QLinearRelu"]
    assert result.output.count("PASS ") == len(chosen)
    result = _invoke("run", suite_dir, "--backend", "emulator", "-k", "qlinearconv_nhwc-*pool*")
    assert result.exit_code == 0
    assert result.output.count("PASS ") == sum(
        c["op"] == "QLinearConv_nhwc" and "pool" in c["name"] for c in manifest["cases"]
    )


def _assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for w in words:
        assert w in lines[0], result.output


def test_cli_run_bad_inputs(suite_dir: Path, tmp_path: Path) -> None:
    emu = "systolic_sdk.conformance.runners:emulator"
    _assert_one_line_error(_invoke("run", tmp_path / "none", "--backend", emu), "no such suite")
    _assert_one_line_error(_invoke("run", tmp_path, "--backend", emu), "manifest.json")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    _assert_one_line_error(_invoke("run", bad, "--backend", emu), "not valid JSON")
    text = '{"format": "systolic-sdk-conformance", "format_version": 1, "cases": [{"name": "x"}]}'
    (bad / "manifest.json").write_text(text)
    _assert_one_line_error(_invoke("run", bad, "--backend", emu), "case 'x'", "'op'")
    (bad / "manifest.json").write_text('{"format": "other"}')
    _assert_one_line_error(_invoke("run", bad, "--backend", emu), "format")
    for spec, words in [
        ("no_such_module_xyz:run", ("cannot import module 'no_such_module_xyz'",)),
        ("systolic_sdk.conformance.runners:nope", ("has no 'nope'",)),
        ("systolic_sdk.conformance.runners", ("MODULE:FUNCTION",)),
        (f"{tmp_path / 'missing.py'}:run", ("no such file",)),
    ]:
        _assert_one_line_error(_invoke("run", suite_dir, "--backend", spec), *words)
    broken = tmp_path / "broken_backend.py"
    broken.write_text("raise ImportError('needs the board SDK')\n")
    _assert_one_line_error(_invoke("run", suite_dir, "--backend", f"{broken}:run"),
                           "needs the board SDK")  # fmt: skip
    _assert_one_line_error(_invoke("run", suite_dir, "--backend", emu, "-k", "no-such-case"),
                           "selects no case")  # fmt: skip
    _assert_one_line_error(
        _invoke("run", suite_dir, "--backend", emu, "--junit", tmp_path / "no" / "r.xml"),
        "does not exist",
    )


def test_tampered_file_is_refused(suite_dir: Path, manifest: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "suite"
    shutil.copytree(suite_dir, copy)
    case = manifest["cases"][0]
    target = copy / case["outputs"][0]["file"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    result = _invoke("run", copy, "--backend", "emulator")
    _assert_one_line_error(result, "sha256", case["name"])
    target.unlink()
    _assert_one_line_error(_invoke("run", copy, "--backend", "emulator"), "missing")
    assert len(load_suite(suite_dir).cases) == len(manifest["cases"])


def test_tie_set_is_exact_on_another_seed(tmp_path: Path) -> None:
    """The invariant holds for other draws too: seed 5, two cases per corner."""
    man = generate_suite(tmp_path / "s", count=2, seed=5)
    report = run_suite(tmp_path / "s", f"{BACKENDS}:half_away_from_zero")
    tie = {c["name"] for c in man["cases"] if "tie" in c["tags"]}
    assert tie and _failed(report) == tie
