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


def quantize_digits(out: Path, *, backend: str = "systolic", **options) -> Path:
    """The shipped model quantized (QOperator) on 64 calibration samples."""
    from systolic_sdk import quantize_static
    from systolic_sdk.calibration.reader import ArrayReader
    from systolic_sdk.quantization.types import QuantFormat

    calib = np.load(DIGITS / "calib.npz")["input"][:64]
    quantize_static(
        str(DIGITS / "model.onnx"),
        str(out),
        ArrayReader({"input": calib}, batch_size=16),
        quant_format=QuantFormat.QOperator,
        backend=backend,
        **options,
    )
    return out


@pytest.fixture(scope="session")
def digits_paths(tmp_path_factory) -> dict[str, Path]:
    """fp32 model, Systolic model (no equalization: the fp32 tensors are the reference
    as they are) and an .npz of SAMPLES test samples with their labels."""
    if not (DIGITS / "model.onnx").exists():
        pytest.skip("models/digits_cnn is not present")
    folder = tmp_path_factory.mktemp("report_digits")
    q = quantize_digits(folder / "digits.systolic.onnx", equalization=False)
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
    """EfficientNet-Lite0 quantized for the Systolic backend on 4 photos (without the fp32
    preparation, which takes most of a minute on this network), and 2 other photos
    preprocessed as the model's input."""
    import sys

    if not (EFFNET / "model.onnx").exists() or not (EFFNET / "photos.npz").exists():
        pytest.skip("models/efficientnet_lite0 is not present")
    from systolic_sdk import quantize_static
    from systolic_sdk.calibration.reader import ArrayReader
    from systolic_sdk.quantization.types import QuantFormat

    sys.path.insert(0, str(EFFNET))
    try:
        from preprocess import preprocess
    finally:
        sys.path.remove(str(EFFNET))
    with np.load(EFFNET / "photos.npz") as z:
        x = preprocess(z["images"][:6]).astype(np.float32)
    folder = tmp_path_factory.mktemp("report_effnet")
    q = folder / "effnet.systolic.onnx"
    quantize_static(
        str(EFFNET / "model.onnx"),
        str(q),
        ArrayReader({"input": x[:4]}, batch_size=4),
        quant_format=QuantFormat.QOperator,
        backend="systolic",
        equalization=False,
        bias_correction=False,
    )
    np.savez(folder / "photos2.npz", input=x[4:6])
    return {"fp32": EFFNET / "model.onnx", "quant": q, "data": folder / "photos2.npz"}
