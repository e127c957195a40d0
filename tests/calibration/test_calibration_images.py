"""Image folders and preprocessing, on real digits from the shipped model's test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from calib_models import conv_model
from PIL import Image

from systolic_sdk.calibration import PREPROCESSORS, calibrate, open_source, register_preprocessor
from systolic_sdk.calibration.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_none
from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import load_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits_cnn"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Eight real test digits as uint8 [8, 28, 28] (white on black)."""
    with np.load(DIGITS / "test.npz") as data:
        x = data["input"][:8, 0]
    return np.rint(x * 255).astype(np.uint8)


def write_images(folder: Path, digits: np.ndarray, kinds=("png", "bmp", "png")) -> list[Path]:
    paths = []
    for i, d in enumerate(digits):
        kind = kinds[i % len(kinds)]
        p = folder / f"digit_{i}.{kind}"
        Image.fromarray(d, mode="L").save(p)
        paths.append(p)
    return paths


def drain(reader) -> np.ndarray:
    return np.concatenate([f[next(iter(f))] for f in iter(reader.get_next, None)])


def test_digits_folder_feeds_the_shipped_model(tmp_path, digits):
    model = load_model(DIGITS / "model.onnx")
    write_images(tmp_path, digits)
    register_preprocessor("unit", lambda f, size: preprocess_none(f, size) / np.float32(255))
    try:
        reader = open_source(tmp_path, model, preprocess="unit", batch_size=3)
        got = drain(reader)
        assert got.shape == (8, 1, 28, 28) and got.dtype == np.float32
        # lossless PNG/BMP: the gray levels come back (through RGB -> luma)
        np.testing.assert_allclose(got[:, 0] * 255, digits, atol=1e-3)
        reader.rewind()
        ranges = calibrate(model, reader, method="minmax")
        assert ranges["input"] == pytest.approx((0.0, digits.max() / 255), abs=1e-6)
    finally:
        del PREPROCESSORS["unit"]


def test_natural_order_and_dataset_size(tmp_path, digits):
    model = conv_model(batch="N", channels=1, size=28)
    for i in (10, 2, 1):
        Image.fromarray(digits[i % 8], mode="L").save(tmp_path / f"img{i}.png")
    got = drain(open_source(tmp_path, model, dataset_size=2))
    np.testing.assert_allclose(got[:, 0], digits[[1, 2]].astype(np.float32), atol=1e-3)


def test_jpeg_and_method1_range(tmp_path, digits):
    model = conv_model(batch="N", channels=3, size=32)
    rgb = np.stack([digits[0], digits[1], digits[2]], axis=-1)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "a.jpg", quality=95)
    got = drain(open_source(tmp_path, model, preprocess="preprocess_method1"))
    assert got.shape == (1, 3, 32, 32)
    assert got.min() >= -1.0 and got.max() <= 1.0 and got.min() < -0.9 and got.max() > 0.5


def test_method2_resizes_shorter_side_crops_centre_and_normalizes(tmp_path):
    model = conv_model(batch="N", channels=3, size=16)
    # 64x32 image: left quarter red, the middle half gray, right quarter blue
    img = np.full((32, 64, 3), 128, np.uint8)
    img[:, :16] = (255, 0, 0)
    img[:, 48:] = (0, 0, 255)
    Image.fromarray(img).save(tmp_path / "wide.png")
    got = drain(open_source(tmp_path / "wide.png", model, preprocess="preprocess_method2"))
    assert got.shape == (1, 3, 16, 16)
    # shorter side 32 -> 18 (16 / 0.875), width 36; the centre 16 columns are all gray
    gray = (np.float32(128 / 255) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(got[0, :, 8, 8], gray, atol=1e-5)
    np.testing.assert_allclose(got[0, :, :, 4:12].mean(axis=(1, 2)), gray, atol=1e-5)


def test_nhwc_model_gets_nhwc(tmp_path, digits):
    import onnx.helper as oh
    from onnx import TensorProto

    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "nhwc",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20, 24, 3])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 20, 24, 3])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    Image.fromarray(digits[0], mode="L").save(tmp_path / "d.png")
    got = drain(open_source(tmp_path, model))
    assert got.shape == (1, 20, 24, 3)
    want = np.asarray(Image.fromarray(digits[0]).convert("RGB").resize((24, 20), Image.BILINEAR))
    np.testing.assert_array_equal(got[0], want.astype(np.float32))


def test_bad_image_folders(tmp_path, digits):
    model = conv_model(batch="N", channels=1, size=28)
    write_images(tmp_path, digits[:2])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SdkError, match=r"broken.png: not a readable image"):
        open_source(tmp_path, model)
    (tmp_path / "broken.png").unlink()
    (tmp_path / "labels.txt").write_text("0 1")
    with pytest.raises(SdkError, match=r"mixes images with other files \(e.g. labels.txt\)"):
        open_source(tmp_path, model)
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(SdkError, match="unknown preprocessing method 'resnet'"):
        open_source(tmp_path, model, preprocess="resnet")
    with pytest.raises(SdkError, match="images can feed single-input models only"):
        from calib_models import two_input_model

        open_source(tmp_path, two_input_model())
