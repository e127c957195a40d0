"""Fixtures for the calibration tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from calib_models import conv_model


@pytest.fixture
def model() -> onnx.ModelProto:
    return conv_model()


@pytest.fixture
def samples() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((20, 1, 8, 8)).astype(np.float32)
