"""EfficientNet-Lite0 (ImageNet weights, depthwise convs, ReLU6) through the Systolic
backend from the command line, NCHW and NHWC: quantize, then validate bit for bit against
onnxruntime on the standard-ONNX lowering, on real photo crops.

A few crops keep this fast; bench/systolic_e2e.py scores all 122 held out."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from systolic_sdk.backends.systolic import check_systolic_graph
from systolic_sdk.cli import cli

FOLDER = Path(__file__).resolve().parents[2] / "models" / "efficientnet_lite0"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path, str]:
    """(calibration .npz, evaluation .npz, input name) from disjoint real photo crops."""
    spec = importlib.util.spec_from_file_location("effnet_prep", FOLDER / "preprocess.py")
    assert spec is not None and spec.loader is not None
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    x = prep.preprocess(np.load(FOLDER / "photos.npz")["images"])
    name = onnx.load(FOLDER / "model.onnx", load_external_data=False).graph.input[0].name
    tmp = tmp_path_factory.mktemp("effnet")
    np.savez(tmp / "calib.npz", **{name: x[1:33:2]})  # 16 odd-numbered crops
    np.savez(tmp / "eval.npz", **{name: x[0:8:2]})  # 4 even-numbered crops
    return tmp / "calib.npz", tmp / "eval.npz", name


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_quantize_then_validate_is_bit_exact(photos, tmp_path: Path, layout: str) -> None:
    """The default preparation (GPTQ weights and bias correction measured layer by layer in
    the int8 model) in NCHW; NHWC with cross-layer equalization, whose per-channel ReLU6
    bounds run as int8 Min."""
    calib, data, _ = photos
    out, report = tmp_path / "effnet.systolic.onnx", tmp_path / "report.json"
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "quantize",
            str(FOLDER / "model.onnx"),
            "-o",
            str(out),
            "--backend",
            "systolic",
            "--layout",
            layout,
            "--calibration-data",
            str(calib),
            *(["--equalization", "--no-weight-rounding"] if layout == "nhwc" else []),
        ],
    )
    assert res.exit_code == 0, res.output
    model = onnx.load(out)
    check_systolic_graph(model)
    ops = Counter(n.op_type for n in model.graph.node)
    conv = "QLinearConv_nhwc" if layout == "nhwc" else "QLinearConv"
    assert ops[conv] == 50 and ops["Conv"] == 0  # every conv, depthwise included, on the array
    # ReLU6 narrowed into its conv; after equalization its per-channel bounds are int8 Min
    assert ops["Min"] == (33 if layout == "nhwc" else 0) and ops["Clip"] == 0
    assert ops["QLinearRelu"] == 0  # every ReLU fused into its conv
    if layout == "nhwc":
        assert ops["Transpose"] <= 4
    res = runner.invoke(
        cli,
        [
            "validate",
            str(out),
            "--fp32",
            str(FOLDER / "model.onnx"),
            "--data",
            str(data),
            "--json",
            str(report),
        ],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(report.read_text())
    assert r["bit_exact"] and r["ok"]
    assert all(t["bit_exact"] for t in r["tensors"]) and len(r["tensors"]) >= 60
    (logits,) = r["outputs"]
    assert logits["top1_agreement"] is not None and logits["sqnr_db"] is not None
    assert "result: OK" in res.output
