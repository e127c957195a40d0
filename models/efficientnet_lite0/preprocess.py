"""Input preprocessing for ``efficientnet_lite0/model.onnx`` (pure numpy).

EfficientNet-Lite was trained (TensorFlow reference implementation) on RGB images scaled
as ``(pixel - 127) / 128``, i.e. roughly to [-1, 1], with no per-channel mean/std.
"""

from __future__ import annotations

import numpy as np

MEAN = 127.0
STD = 128.0
SIZE = 224


def preprocess(images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 RGB images [N,224,224,3] (or one [224,224,3]) -> float32 NCHW model input."""
    x = np.asarray(images_uint8_nhwc)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected [N,H,W,3] RGB images, got shape {x.shape}")
    x = (x.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
