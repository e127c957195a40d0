"""Smoke test of bench/quantize_vs_ort.py and its helpers in bench/common.py (never on time)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _load(name: str) -> ModuleType:
    """Load bench/<name>.py; bench/ is on sys.path only while it loads (its scripts' names
    must not shadow other modules for the rest of the session)."""
    saved = list(sys.path)
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = saved
    return mod


@pytest.fixture(scope="module")
def common() -> ModuleType:
    return _load("common")


@pytest.fixture(scope="module")
def qvo() -> ModuleType:
    if not (REPO / "models" / "digits_cnn" / "model.onnx").exists():
        pytest.skip("models/digits_cnn is not present")
    return _load("quantize_vs_ort")


def _ours_available() -> bool:
    import systolic_sdk

    names = ("quantize_static", "quantize_dynamic", "QuantType", "QuantFormat")
    return all(hasattr(systolic_sdk, n) for n in names + ("CalibrationDataReader",))


def test_quick_run_end_to_end(qvo: ModuleType, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "figures.json"
    records = qvo.main(["--quick", "--json", str(out_json)])
    printed = capsys.readouterr().out

    assert [r["model"] for r in records] == ["digits_cnn"]
    rec = records[0]
    assert rec["n_calib"] == 8 and rec["n_eval"] == 64
    assert rec["fp32"]["agree"] == 1.0 and rec["fp32"]["acc"] > 0.9
    names = [e["config"]["name"] for e in rec["configs"]]
    assert names == list(qvo.QUICK_CONFIGS)
    for entry in rec["configs"]:
        ort = entry["ort"]
        assert ort["status"] == "ok", ort["status"]
        assert ort["seconds"] > 0 and ort["peak_rss_mb"] >= ort["base_rss_mb"] > 0
        assert ort["agree"] >= 0.9 and ort["cos_mean"] > 0.99
        ours = entry["ours"]
        assert isinstance(ours["status"], str) and ours["status"]
        if _ours_available():
            assert ours["status"] == "ok", ours["status"]
            assert ours["agree"] >= 0.9 and ours["cos_mean"] > 0.99
        else:  # recorded as a failure row, not a crash
            assert ours["status"].startswith("quantize failed: AttributeError")
        assert f"{entry['config']['name']}" in printed
    ratio_rows = [ln for ln in printed.splitlines() if ln.split()[:1] == ["ours/ort"]]
    assert len(ratio_rows) == len(names)
    assert json.loads(out_json.read_text())["models"][0]["model"] == "digits_cnn"


def test_static_configs_pass_identical_arguments(qvo: ModuleType, tmp_path: Path) -> None:
    """Both sides' setup builds the same call: a reader over the same data, same enums."""
    import onnxruntime.quantization as ortq

    calib = tmp_path / "c.npz"
    np.savez(calib, input=np.zeros((5, 1, 28, 28), np.float32))
    cfg = next(c for c in qvo.CONFIGS if c.name == "qop_u8s8_channel")
    from dataclasses import asdict

    work = qvo.quantize_setup(
        "ort",
        str(REPO / "models" / "digits_cnn" / "model.onnx"),
        str(tmp_path / "q.onnx"),
        str(calib),
        "input",
        asdict(cfg),
        2,
    )
    assert work() == {"calib_batches": 3}
    reader = qvo._make_reader(ortq.CalibrationDataReader, "x", np.arange(5.0), 2)
    assert isinstance(reader, ortq.CalibrationDataReader)
    assert [len(f["x"]) for f in reader] == [2, 2, 1] and len(reader) == 3


def test_measure_in_child_reports_peak_and_failures(common: ModuleType, tmp_path: Path) -> None:
    script = tmp_path / "work.py"
    script.write_text(
        "import numpy as np\n"
        "def alloc(mb):\n"
        "    def work():\n"
        "        a = np.ones(mb * 2**20 // 8)\n"
        "        return {'sum': float(a[:10].sum())}\n"
        "    return work\n"
        "def broken(msg):\n"
        "    raise ValueError(msg)\n"
    )
    small = common.measure_in_child(script, "alloc", {"mb": 1})
    big = common.measure_in_child(script, "alloc", {"mb": 200})
    assert small.ok and big.ok and big.result["sum"] == 10.0
    assert big.peak_rss_mb - big.base_rss_mb >= 190
    if big.result["peak_is_call_only"]:
        assert small.peak_rss_mb - small.base_rss_mb < 50
    bad = common.measure_in_child(script, "broken", {"msg": "no such tensor 'x'"})
    assert not bad.ok and bad.error == "ValueError: no such tensor 'x'"


def test_score_and_table(common: ModuleType) -> None:
    ref = np.array([[1.0, 0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0, 0]], np.float32)
    out = np.array([[1.0, 0, 0, 0, 0, 0], [2.0, 1.0, 0, 0, 0, 0]], np.float32)
    s = common.score(out, ref, np.array([0, 0]))
    assert s["agree"] == 0.5 and s["acc"] == 1.0 and s["top5_agree"] == 1.0
    assert s["cos_min"] == pytest.approx(1 / np.sqrt(5)) and s["cos_mean"] > s["cos_min"]
    assert common.ratio(3.0, 2.0) == "1.50x" and common.ratio(None, 2.0) == "-"
    text = common.format_table(("a", "bb"), [["1", "x"], ["22", ""]])
    assert text.splitlines()[0] == "a   bb" and text.splitlines()[3] == "22"
    md = common.format_table(("a", "b"), [["1", "2"]], markdown=True)
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_invalid_model_is_a_status_not_a_crash(qvo: ModuleType, common: ModuleType, tmp_path):
    """A per-channel DequantizeLinear at opset 11 (what onnxruntime writes for old models)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int8), "w"),
        numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "s"),
        numpy_helper.from_array(np.array([0, 0], np.int8), "z"),
    ]
    node = helper.make_node("DequantizeLinear", ["w", "s", "z"], ["y"], axis=0)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        inits,
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    bm = common.BenchModel(
        "t", path, "x", np.zeros((1, 2), np.float32), np.zeros((3, 2), np.float32)
    )
    status, scores = qvo.check_and_score(path, bm, np.zeros((3, 2), np.float32))
    assert status.startswith("invalid model (onnx.checker): ") and "axis" in status
    assert scores == {}
    missing, _ = qvo.check_and_score(tmp_path / "none.onnx", bm, np.zeros((3, 2), np.float32))
    assert missing == "quantize returned but wrote no model"
