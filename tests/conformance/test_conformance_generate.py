"""``conformance generate``: the layout, the manifest, determinism, --ops/--count, valid
models, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from click.testing import CliRunner
from onnx import numpy_helper

from systolic_sdk import __version__
from systolic_sdk.cli.conformance_cmd import conformance
from systolic_sdk.conformance import generate_suite
from systolic_sdk.conformance.cases import check_model
from systolic_sdk.conformance.corners import CORNERS, OP_NAMES

SUBSET = ["QLinearConv_nhwc", "qlinearadd", "QuantizeLinear"]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_manifest(suite_dir: Path, manifest: dict) -> None:
    assert manifest["seed"] == 0 and manifest["count"] == 1
    assert manifest["sdk_version"] == __version__
    assert manifest["ops"] == OP_NAMES and len(OP_NAMES) == 8
    assert len(manifest["cases"]) == len(CORNERS)
    listed = set()
    for case in manifest["cases"]:
        folder = suite_dir / case["name"]
        assert (folder / "model.onnx").is_file()
        assert case["op"] in OP_NAMES and case["tags"] == sorted(case["tags"])
        for f in case["files"]:
            data = (suite_dir / f["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"]
            listed.add(f["path"])
        model = onnx.load(str(folder / "model.onnx"))
        graph_inputs = [i.name for i in model.graph.input]
        assert [i["name"] for i in case["inputs"]] == graph_inputs
        for k, entry in enumerate(case["inputs"]):
            assert entry["file"] == f"{case['name']}/test_data_set_0/input_{k}.pb"
            tensor = onnx.load_tensor(str(suite_dir / entry["file"]))
            assert tensor.name == graph_inputs[k]
            assert list(numpy_helper.to_array(tensor).shape) == entry["shape"]
        out = onnx.load_tensor(str(folder / "test_data_set_0" / "output_0.pb"))
        assert out.name == model.graph.output[0].name
        node = model.graph.node[0]
        assert (node.op_type, node.domain) == (case["op_type"], case["domain"])
        assert {p.key: p.value for p in model.metadata_props}["systolic_sdk.backend"] == "systolic"
    files = set(_files(suite_dir)) - {"manifest.json"}
    assert files == listed  # every file is listed, nothing else is written


def test_models_pass_onnx_checker(suite_dir: Path, manifest: dict) -> None:
    for case in manifest["cases"]:
        model = onnx.load(str(suite_dir / case["model"]))
        check_model(model)  # custom-domain schemas registered; QLinearConv's relu set aside
        node = model.graph.node[0]
        standard = node.domain in ("", "com.microsoft")
        if standard and not any(a.name == "relu" for a in node.attribute):
            onnx.checker.check_model(model, full_check=True)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate_suite(tmp_path / "a", SUBSET, count=2, seed=11)
    b = generate_suite(tmp_path / "b", SUBSET, count=2, seed=11)
    assert a == b
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    generate_suite(tmp_path / "c", SUBSET, count=2, seed=12)
    fa, fc = _files(tmp_path / "a"), _files(tmp_path / "c")
    assert fa.keys() == fc.keys() and fa != fc
    names = [c["name"] for c in a["cases"]]
    assert len(names) == 2 * sum(c.op in a["ops"] for c in CORNERS) and len(set(names)) == len(
        names
    )


def test_filtered_and_larger_suites_reuse_the_cases(suite_dir: Path, tmp_path: Path) -> None:
    """--ops and --count do not change the other cases: each case has its own stream."""
    man = generate_suite(tmp_path / "f", ["MaxPool", "qlinearmatmul"], count=2, seed=0)
    assert man["ops"] == ["QLinearMatMul", "MaxPool"]
    assert {c["op"] for c in man["cases"]} == {"QLinearMatMul", "MaxPool"}
    full = _files(suite_dir)
    for rel, data in _files(tmp_path / "f").items():
        if rel != "manifest.json" and rel.split("/")[0].endswith("-0"):
            assert full[rel] == data, rel


def _assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for w in words:
        assert w in lines[0], result.output


def test_cli_generate(tmp_path: Path) -> None:
    out = tmp_path / "s"
    result = CliRunner().invoke(conformance, ["generate", "-o", str(out), "--ops", "QLinearRelu",
                                              "--ops", "quantizelinear,MaxPool"])  # fmt: skip
    assert result.exit_code == 0, result.output
    man = json.loads((out / "manifest.json").read_text())
    ties = sum("tie" in c["tags"] for c in man["cases"])
    assert result.output.strip() == f"wrote {len(man['cases'])} cases ({ties} tagged tie) to {out}"
    assert man["ops"] == ["QLinearRelu", "MaxPool", "QuantizeLinear"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(conformance, ["generate", "-o", str(out)])
    _assert_one_line_error(result, "not empty", "--force")
    result = CliRunner().invoke(conformance, ["generate", "-o", str(tmp_path / "t"), "--ops",
                                              "QLinearConv,Gemm"])  # fmt: skip
    _assert_one_line_error(result, "unknown op 'Gemm'")
    result = CliRunner().invoke(conformance, ["generate", "-o", str(tmp_path / "no" / "s")])
    _assert_one_line_error(result, "does not exist")
    other = tmp_path / "user_data"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    result = CliRunner().invoke(conformance, ["generate", "-o", str(other), "--force"])
    _assert_one_line_error(result, "holds no conformance suite")
    assert (other / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [*before, "user_data"]  # no leftovers
    result = CliRunner().invoke(conformance, ["generate", "-o", str(out), "--ops", "MaxPool",
                                              "--force", "-q"])  # fmt: skip
    assert result.exit_code == 0 and result.output == ""
    assert {c["op"] for c in json.loads((out / "manifest.json").read_text())["cases"]} == {
        "MaxPool"
    }


def test_help_teaches_with_examples() -> None:
    for args in ([], ["generate"], ["run"]):
        result = CliRunner().invoke(conformance, [*args, "--help"])
        assert result.exit_code == 0
        assert "Examples:" in result.output and "systolic-quantize conformance" in result.output
