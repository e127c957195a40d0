"""Image preprocessing methods for calibration images.

A method is one function ``(filename, (width, height)) -> ndarray`` returning a float32
``[height, width, channels]`` image (RGB, 3 channels); the image reader then adapts the
channel count and layout (NCHW or NHWC) to the model. Add a method with one line::

    register_preprocessor("my_method", my_function)

Built-in methods (MLPerf inference v0.5 treatments):

* ``preprocess_method1`` (MobileNet): resize to the model's input size, pixels scaled to
  [-1, 1] as ``(p / 255 - 0.5) * 2``.
* ``preprocess_method2`` (ResNet): resize the shorter side to ``size / 0.875`` (256 for
  224), centre-crop to the input size, ``(p / 255 - mean) / std`` with the ImageNet mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
* ``None`` (also ``"none"``): resize to the input size, raw pixel values 0..255.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from systolic_sdk.errors import SdkError

Preprocessor = Callable[[str, tuple[int, int]], np.ndarray]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageError(SdkError):
    """An image cannot be read or preprocessed."""


def load_rgb(filename: str | Path):
    """Open an image with Pillow as RGB; one-line error if it is not a readable image."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow is a dependency
        raise ImageError("reading images needs Pillow (pip install Pillow)") from None
    try:
        with Image.open(filename) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{filename}: not a readable image ({reason})") from None


def _resize(img, size: tuple[int, int]):
    from PIL import Image

    return img.resize(size, Image.BILINEAR)


def preprocess_none(filename: str, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (width, height); raw 0..255 values."""
    return np.asarray(_resize(load_rgb(filename), size), dtype=np.float32)


def preprocess_method1(filename: str, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size``; pixels to [-1, 1] (MobileNet)."""
    img = np.asarray(_resize(load_rgb(filename), size), dtype=np.float32)
    return (img / np.float32(255.0) - np.float32(0.5)) * np.float32(2.0)


def preprocess_method2(filename: str, size: tuple[int, int]) -> np.ndarray:
    """Shorter side to ``size / 0.875``, centre crop, ImageNet mean/std (ResNet)."""
    width, height = size
    img = load_rgb(filename)
    scale = max(width, height) / 0.875 / min(img.size)
    new = (max(width, round(img.size[0] * scale)), max(height, round(img.size[1] * scale)))
    img = _resize(img, new)
    left = (new[0] - width) // 2
    top = (new[1] - height) // 2
    img = img.crop((left, top, left + width, top + height))
    pixels = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    return (pixels - IMAGENET_MEAN) / IMAGENET_STD


PREPROCESSORS: dict[str, Preprocessor] = {
    "None": preprocess_none,
    "preprocess_method1": preprocess_method1,
    "preprocess_method2": preprocess_method2,
}


def register_preprocessor(name: str, function: Preprocessor) -> None:
    """Make ``function`` available as preprocessing method ``name``."""
    PREPROCESSORS[name] = function


def get_preprocessor(name: str | None) -> Preprocessor:
    """The method called ``name`` (None or "none" for no normalization)."""
    if name is None or str(name).lower() == "none":
        return PREPROCESSORS["None"]
    if name not in PREPROCESSORS:
        raise SdkError(
            f"unknown preprocessing method '{name}' (choose from {', '.join(PREPROCESSORS)})"
        )
    return PREPROCESSORS[name]
