"""Shared pieces of the end-to-end tests: scoring on the shipped test split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from systolic_sdk.calibration import ArrayReader

TOLERANCE = 0.01  # one accuracy point


@pytest.fixture(scope="session")
def fp32_accuracy(digits_model_path, digits_accuracy) -> float:
    return digits_accuracy(digits_model_path)


@pytest.fixture(scope="session")
def score(digits_accuracy) -> Callable[[onnx.ModelProto | Path], float]:
    """Accuracy (0..1) on the shipped test split, in onnxruntime."""
    return digits_accuracy


@pytest.fixture
def calib_reader(digits_calib) -> Callable[[], ArrayReader]:
    return lambda: ArrayReader({"input": digits_calib}, batch_size=50)


def check_written(path: Path) -> onnx.ModelProto:
    """The file passes the full checker and loads in onnxruntime."""
    onnx.checker.check_model(str(path), full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx.load(str(path))
