"""Shared fixtures: the shipped model and its data, small hand-built models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
DIGITS_DIR = REPO / "models" / "digits_cnn"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture(scope="session")
def digits_dir() -> Path:
    """Folder of the shipped model (model.onnx, calib.npz, test.npz, test_data_set_0/)."""
    return _require(DIGITS_DIR / "model.onnx").parent


@pytest.fixture(scope="session")
def digits_model_path(digits_dir: Path) -> Path:
    return digits_dir / "model.onnx"


@pytest.fixture(scope="session")
def digits_model(digits_model_path: Path) -> onnx.ModelProto:
    """The shipped fp32 model (do not modify: session-scoped; copy first)."""
    return onnx.load(str(digits_model_path))


@pytest.fixture(scope="session")
def digits_calib(digits_dir: Path) -> np.ndarray:
    """Calibration split: float32 [200, 1, 28, 28]."""
    with np.load(_require(digits_dir / "calib.npz")) as z:
        return z["input"]


@pytest.fixture(scope="session")
def digits_test(digits_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test split: (float32 [1000, 1, 28, 28], int64 labels [1000])."""
    with np.load(_require(digits_dir / "test.npz")) as z:
        return z["input"], z["label"]


def tiny_conv_model(opset: int = 13) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> MatMul: a small float model with named nodes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "b")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (64, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "w2"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [w, b, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def make_tiny_model():
    """Factory: ``make_tiny_model(opset=13)`` builds a fresh Conv/Relu/Flatten/MatMul model."""
    return tiny_conv_model


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    return tiny_conv_model()


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_conv_model(), str(path))
    return path


@pytest.fixture
def tiny_calib() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (16, 1, 4, 4)).astype(np.float32)


@pytest.fixture(scope="session")
def ort_reader():
    """Factory: ``ort_reader(arrays, batch)``, an onnxruntime.quantization
    CalibrationDataReader giving ``arrays`` (name -> samples) in batches of ``batch``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self, arrays: dict[str, np.ndarray], batch: int) -> None:
            n = len(next(iter(arrays.values())))
            self.batches = iter(
                [{k: v[i : i + batch] for k, v in arrays.items()} for i in range(0, n, batch)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader


@pytest.fixture(scope="session")
def digits_ort_int8(
    tmp_path_factory: pytest.TempPathFactory, digits_model_path: Path, digits_calib, ort_reader
) -> Path:
    """The shipped model quantized by onnxruntime: QOperator, QInt8/QInt8, symmetric
    activations, min/max over the calibration split (do not modify: session-scoped)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    out = tmp_path_factory.mktemp("digits_ort") / "digits_int8.onnx"
    quantize_static(
        str(digits_model_path),
        str(out),
        ort_reader({"input": digits_calib}, 50),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True},
    )
    return out


@pytest.fixture(scope="session")
def digits_accuracy(digits_test):
    """Factory: ``digits_accuracy(model)``, the top-1 accuracy (0..1) on the shipped test
    split of a model (ModelProto or path) run in onnxruntime on CPU, in batches."""
    import onnxruntime as ort

    x, labels = digits_test

    def accuracy(model: onnx.ModelProto | str | Path, batch: int = 250) -> float:
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        classes = np.concatenate(
            [sess.run(None, {name: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
        )
        return float(np.mean(classes == labels))

    return accuracy
