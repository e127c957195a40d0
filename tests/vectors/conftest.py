"""Fixtures: the shipped model quantized for the Systolic backend, and one export of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

EXPORT_SAMPLES = 2


@pytest.fixture(scope="session")
def export_samples() -> int:
    """How many samples the shared export holds."""
    return EXPORT_SAMPLES


@pytest.fixture(scope="session")
def systolic_digits(tmp_path_factory: pytest.TempPathFactory, digits_model_path: Path,
                    digits_calib: np.ndarray) -> Path:  # fmt: skip
    """The shipped model quantized (QOperator) for the Systolic backend."""
    import systolic_sdk
    from systolic_sdk import QuantFormat
    from systolic_sdk.calibration import ArrayReader

    out = tmp_path_factory.mktemp("vectors_model") / "digits_systolic.onnx"
    reader = ArrayReader({"input": digits_calib[:64]}, batch_size=16)
    fmt = QuantFormat.QOperator
    systolic_sdk.quantize_static(
        digits_model_path, out, reader, quant_format=fmt, backend="systolic"
    )
    return out


@pytest.fixture(scope="session")
def digits_samples(tmp_path_factory: pytest.TempPathFactory,
                   digits_test: tuple[np.ndarray, np.ndarray]) -> Path:  # fmt: skip
    """The first test samples as an .npz keyed by the model's input name."""
    path = tmp_path_factory.mktemp("vectors_data") / "samples.npz"
    np.savez(path, input=digits_test[0][:8])
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, systolic_digits: Path,
             digits_samples: Path) -> tuple[Path, dict]:  # fmt: skip
    """One export in every format (via the CLI): (folder, manifest)."""
    from click.testing import CliRunner

    from systolic_sdk.cli.vectors_cmd import export_vectors

    out = tmp_path_factory.mktemp("vectors_out") / "golden"
    args = [str(systolic_digits), "--data", str(digits_samples), "-o", str(out),
            "--format", "pb,npy,c-header,hex", "--samples", str(EXPORT_SAMPLES)]  # fmt: skip
    result = CliRunner().invoke(export_vectors, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "manifest.json").read_text())
