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


@pytest.fixture
def opened_sessions(monkeypatch) -> list[tuple[list[str], dict]]:
    """Every calibration session opened meanwhile: (tensors reduced in the graph, options)."""
    import importlib

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    real_open = collect_mod.open_session
    seen: list[tuple[list[str], dict]] = []

    def spy(model, names, providers, reduce=(), **options):
        seen.append((list(reduce), options))
        return real_open(model, names, providers, reduce, **options)

    monkeypatch.setattr(collect_mod, "open_session", spy)
    return seen
