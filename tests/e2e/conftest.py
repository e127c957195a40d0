"""Shared pieces of the end-to-end tests: scoring on the shipped test split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from systolic_sdk.calibration import ArrayReader

BATCH = 250
TOLERANCE = 0.01  # one accuracy point


def predict(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """Predicted classes from stock onnxruntime (CPU), in batches."""
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: x[i : i + BATCH]})[0].argmax(1) for i in range(0, len(x), BATCH)]
    )


@pytest.fixture(scope="session")
def fp32_accuracy(digits_model_path, digits_test) -> float:
    x, labels = digits_test
    return float(np.mean(predict(digits_model_path, x) == labels))


@pytest.fixture(scope="session")
def score(digits_test) -> Callable[[onnx.ModelProto | Path], float]:
    x, labels = digits_test

    def _score(model: onnx.ModelProto | Path) -> float:
        return float(np.mean(predict(model, x) == labels))

    return _score


@pytest.fixture
def calib_reader(digits_calib) -> Callable[[], ArrayReader]:
    return lambda: ArrayReader({"input": digits_calib}, batch_size=50)


def check_written(path: Path) -> onnx.ModelProto:
    """The file passes the full checker and loads in onnxruntime."""
    onnx.checker.check_model(str(path), full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx.load(str(path))
