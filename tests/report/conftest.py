"""Fixtures for the report tests: the shipped model quantized for the Systolic backend and
its report on a few dozen test samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_cnn"
EFFNET = REPO / "models" / "efficientnet_lite0"
SAMPLES = 40


def quantize_core(fp32: Path, calib: np.ndarray, out: Path, **config) -> Path:
    """Quantize (static QOperator, min/max over ``calib``) through the core: no fp32
    preparation (equalization, weight rounding, bias correction), so the fp32 model's
    tensors are the reference as they are. ``config``: QuantConfig fields."""
    import onnx

    from systolic_sdk.calibration import ArrayReader, calibrate
    from systolic_sdk.graph.io import save_model
    from systolic_sdk.quantization import prepare_model, quantize_model, tensors_to_calibrate
    from systolic_sdk.quantization.config import QuantConfig
    from systolic_sdk.quantization.types import OutputForm

    cfg = QuantConfig(**{"backend": "systolic", "form": OutputForm.QOPERATOR, **config})
    prepared = prepare_model(onnx.load(str(fp32)), cfg)
    names = tensors_to_calibrate(prepared, cfg)
    ranges = calibrate(prepared, ArrayReader({"input": calib}, 32), names, method="minmax")
    save_model(quantize_model(prepared, cfg, dict(ranges)), out)
    return out


def quantize_digits(out: Path, **config) -> Path:
    """The shipped model quantized on 64 calibration samples (QuantConfig fields)."""
    calib = np.load(DIGITS / "calib.npz")["input"][:64]
    return quantize_core(DIGITS / "model.onnx", calib, out, **config)


@pytest.fixture(scope="session")
def digits_paths(tmp_path_factory) -> dict[str, Path]:
    """fp32 model, Systolic model and an .npz of SAMPLES test samples with labels."""
    if not (DIGITS / "model.onnx").exists():
        pytest.skip("models/digits_cnn is not present")
    folder = tmp_path_factory.mktemp("report_digits")
    q = quantize_digits(folder / "digits.systolic.onnx")
    with np.load(DIGITS / "test.npz") as z:
        np.savez(folder / "test40.npz", input=z["input"][:SAMPLES], label=z["label"][:SAMPLES])
    return {"fp32": DIGITS / "model.onnx", "quant": q, "data": folder / "test40.npz"}


@pytest.fixture(scope="session")
def digits_report(digits_paths) -> dict:
    from systolic_sdk.report import build_report

    p = digits_paths
    return build_report(p["quant"], p["fp32"], p["data"], max_samples=SAMPLES, progress=False)


@pytest.fixture(scope="session")
def digits_feeds(digits_paths) -> dict[str, np.ndarray]:
    with np.load(digits_paths["data"]) as z:
        return {"input": z["input"]}


@pytest.fixture(scope="session")
def effnet_paths(tmp_path_factory) -> dict[str, Path]:
    """EfficientNet-Lite0 quantized for the Systolic backend on 4 photos (through the core:
    the fp32 preparation takes most of a minute on this network), and 2 other photos
    preprocessed as the model's input."""
    import sys

    if not (EFFNET / "model.onnx").exists() or not (EFFNET / "photos.npz").exists():
        pytest.skip("models/efficientnet_lite0 is not present")
    sys.path.insert(0, str(EFFNET))
    try:
        from preprocess import preprocess
    finally:
        sys.path.remove(str(EFFNET))
    with np.load(EFFNET / "photos.npz") as z:
        x = preprocess(z["images"][:6]).astype(np.float32)
    folder = tmp_path_factory.mktemp("report_effnet")
    q = quantize_core(EFFNET / "model.onnx", x[:4], folder / "effnet.systolic.onnx")
    np.savez(folder / "photos2.npz", input=x[4:6])
    return {"fp32": EFFNET / "model.onnx", "quant": q, "data": folder / "photos2.npz"}
