"""The calibrate and static-runner commands, on the shipped digits model and its data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from systolic_sdk.calibration import ArrayReader, calibrate
from systolic_sdk.calibration.table import read_table
from systolic_sdk.cli.calibrate_cmd import calibrate_command, static_runner_command
from systolic_sdk.graph.io import load_model

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits_cnn"


def run(command, *args: object):
    result = CliRunner().invoke(command, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    """The first 40 calibration digits as a .npy (the model input's rank: a batch)."""
    path = tmp_path_factory.mktemp("data") / "calib.npy"
    with np.load(DIGITS / "calib.npz") as data:
        np.save(path, data["input"][:40])
    return path


def agreement(quantized: Path, n: int = 200) -> float:
    with np.load(DIGITS / "test.npz") as data:
        x = data["input"][:n]
    fp32 = ort.InferenceSession(str(DIGITS / "model.onnx"), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    a = fp32.run(None, {"input": x})[0].argmax(1)
    b = q.run(None, {"input": x})[0].argmax(1)
    return float((a == b).mean())


@pytest.mark.parametrize(
    ("method", "flag"),
    [("naive", []), ("mse", []), ("mse", ["--no-graph-optimizations"])],
)
def test_calibrate_only_writes_the_ranges_of_every_activation(
    tmp_path, calib, method, flag, opened_sessions
):
    """The table holds calibrate()'s ranges, bit for bit; the histogram methods run the
    optimized graph unless --no-graph-optimizations, the min/max methods never do."""
    out = tmp_path / "ranges.json"
    code, text = run(
        calibrate_command,
        "--model_path", DIGITS / "model.onnx", "--dataset_path", calib,
        "--calib_mode", method, "--calibrate-only", "--calibration-table-out", out, "-q",
        *flag,
    )  # fmt: skip
    assert code == 0, text
    optimized = method == "mse" and not flag
    assert [options["optimize"] for _, options in opened_sessions] == [optimized]
    model = load_model(DIGITS / "model.onnx")
    reader = ArrayReader({"input": np.load(calib)})
    assert read_table(out) == calibrate(model, reader, method=method, optimize_graph=optimized)


def test_calibrate_quantizes_and_table_reproduces_it(tmp_path, calib):
    q1, q2, table = tmp_path / "q1.onnx", tmp_path / "q2.onnx", tmp_path / "t.txt"
    code, text = run(
        calibrate_command,
        "--model-path", DIGITS / "model.onnx", "--dataset-path", calib,
        "--calib-mode", "percentile", "--percentile", "99.99",
        "--output-model-path", q1, "--calibration-table-out", table,
    )  # fmt: skip
    assert code == 0, text
    assert f"wrote {q1}" in text and f"wrote {table}" in text
    assert agreement(q1) >= 0.9
    code, text = run(
        calibrate_command,
        "--model_path", DIGITS / "model.onnx", "--calibration-table", table,
        "--output_model_path", q2,
    )  # fmt: skip
    assert code == 0, text
    assert q1.read_bytes() == q2.read_bytes()


def test_static_runner_uses_test_data_sets_beside_the_model(tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    shutil.copy(DIGITS / "model.onnx", folder / "model.onnx")
    with np.load(DIGITS / "calib.npz") as data:
        x = data["input"][:24]
    for i in range(3):
        d = folder / f"test_data_set_{i}"
        d.mkdir()
        tensor = numpy_helper.from_array(x[8 * i : 8 * i + 8], "input")
        (d / "input_0.pb").write_bytes(tensor.SerializeToString())
    out = tmp_path / "model_quant.onnx"
    code, text = run(
        static_runner_command,
        "-i", folder / "model.onnx", "-o", out, "--activation_type", "quint8",
        "--weight_type", "qint8", "--per_channel", "--calibrate_method", "entropy",
    )  # fmt: skip
    assert code == 0, text
    assert "entropy" in text and agreement(out) >= 0.9


def test_static_runner_without_test_data(tmp_path):
    shutil.copy(DIGITS / "model.onnx", tmp_path / "model.onnx")
    code, text = run(static_runner_command, "-i", tmp_path / "model.onnx", "-o", tmp_path / "q")
    assert code == 2 and "no test_data_set_* folders beside the model" in text


def test_systolic_backend_is_looked_up_in_the_registry(tmp_path, calib):
    try:
        from systolic_sdk.backends import available_backends

        has_systolic = "systolic" in available_backends()
    except ImportError:
        has_systolic = False
    code, text = run(
        calibrate_command,
        "--model_path", DIGITS / "model.onnx", "--dataset_path", calib,
        "--backend", "systolic", "--output_model_path", tmp_path / "q.onnx",
    )  # fmt: skip
    if has_systolic:
        assert code == 0, text
    else:
        assert code == 2 and "backend 'systolic' is not available yet" in text
    code, text = run(calibrate_command, "--model_path", "m.onnx", "--dataset_path", calib,
                     "--backend", "tpu")  # fmt: skip
    assert code == 2 and "unknown backend 'tpu'" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --dataset_path"),
        (["--dataset_path", "x", "--calibration-table", "t"], "not both"),
        (["--dataset_path", "x", "--calibrate-only"], "needs --calibration-table-out"),
        (["--dataset_path", "x", "--calib_mode", "entropy", "--moving-average"], "minmax only"),
        (["--dataset_path", "x", "--data_preprocess", "vgg"], "unknown preprocessing method"),
        (["--dataset_path", "missing.npz"], "missing.npz: no such file"),
    ],
)
def test_calibrate_bad_arguments(tmp_path, args, message):
    code, text = run(calibrate_command, "--model_path", DIGITS / "model.onnx", *args,
                     "--output_model_path", tmp_path / "q.onnx")  # fmt: skip
    assert code == 2 and message in text, text
    assert not (tmp_path / "q.onnx").exists()


def test_calibrate_from_an_image_folder_to_a_flatbuffers_table(tmp_path):
    from PIL import Image

    from systolic_sdk.calibration import PREPROCESSORS, register_preprocessor
    from systolic_sdk.calibration.preprocess import preprocess_none

    folder = tmp_path / "digits"
    folder.mkdir()
    with np.load(DIGITS / "test.npz") as data:
        pixels = np.rint(data["input"][:12, 0] * 255).astype(np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i}.png")
    register_preprocessor("unit_scale", lambda f, size: preprocess_none(f, size) / 255)
    try:
        table = tmp_path / "t.flatbuffers"
        code, text = run(
            calibrate_command,
            "--model_path", DIGITS / "model.onnx", "--dataset_path", folder,
            "--data_preprocess", "unit_scale", "--dataset_size", 10, "--calib_mode", "mse",
            "--calibrate-only", "--calibration-table-out", table, "-q",
        )  # fmt: skip
    finally:
        del PREPROCESSORS["unit_scale"]
    assert code == 0, text
    ranges = read_table(table)
    lo, hi = ranges["input"]  # TensorRT's table is symmetric: (-t, t)
    assert lo == -hi and 0.5 < hi <= 1.0
    out = tmp_path / "q.onnx"
    code, text = run(
        calibrate_command,
        "--model_path", DIGITS / "model.onnx", "--calibration-table", table,
        "--output_model_path", out,
    )  # fmt: skip
    assert code == 0, text
    assert agreement(out) >= 0.9
