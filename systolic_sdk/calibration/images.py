"""A folder of images as a calibration data reader (single-input image models)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from systolic_sdk.calibration.preprocess import ImageError, get_preprocessor
from systolic_sdk.calibration.sources import ChunkReader, DataSourceError, model_inputs

# ITU-R 601-2 luma weights, as Pillow's RGB -> L conversion.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_layout(model: onnx.ModelProto) -> tuple[str, int, int, int]:
    """``(layout, channels, height, width)`` of a single-input image model.

    A rank-4 input is NHWC when its last dimension is 1 or 3 and its second is not,
    NCHW otherwise.
    """
    specs = model_inputs(model)
    if len(specs) != 1:
        raise DataSourceError(
            f"images can feed single-input models only; the model has {len(specs)} inputs"
        )
    spec = specs[0]
    dims = spec.dims
    if dims is None or len(dims) != 4:
        raise DataSourceError(
            f"input '{spec.name}' expects {spec.describe()}; images need a rank-4 input"
        )
    if spec.dtype.kind != "f":
        raise DataSourceError(f"input '{spec.name}' expects {spec.dtype}; images give floats")
    nhwc = dims[3] in (1, 3) and dims[1] not in (1, 3)
    c, h, w = (dims[3], dims[1], dims[2]) if nhwc else (dims[1], dims[2], dims[3])
    if None in (c, h, w):
        raise DataSourceError(
            f"input '{spec.name}' has dynamic size {spec.describe()}; images need fixed "
            "channels, height and width"
        )
    return ("NHWC" if nhwc else "NCHW"), c, h, w


def to_model_layout(hwc: np.ndarray, layout: str, channels: int, filename: str) -> np.ndarray:
    """An HWC image as one sample in the model's layout and channel count."""
    if hwc.ndim == 2:
        hwc = hwc[:, :, np.newaxis]
    if hwc.shape[2] == 3 and channels == 1:
        hwc = (hwc @ _LUMA)[:, :, np.newaxis]
    elif hwc.shape[2] == 1 and channels == 3:
        hwc = np.repeat(hwc, 3, axis=2)
    if hwc.shape[2] != channels:
        raise ImageError(
            f"{filename}: preprocessing gave {hwc.shape[2]} channels, the model expects {channels}"
        )
    return hwc if layout == "NHWC" else hwc.transpose(2, 0, 1)


class ImageFolderReader(ChunkReader):
    """Images (in the given order) preprocessed one at a time into model samples."""

    def __init__(
        self,
        files: Sequence[Path],
        model: onnx.ModelProto,
        *,
        preprocess: str | None = None,
        dataset_size: int | None = None,
        batch_size: int = 1,
    ) -> None:
        layout, channels, height, width = image_layout(model)
        func = get_preprocessor(preprocess)
        spec = model_inputs(model)[0]
        files = list(files)[:dataset_size] if dataset_size else list(files)
        _check_headers(files)
        self.layout = layout

        def chunks():
            for f in files:
                hwc = np.asarray(func(str(f), (width, height)))
                sample = to_model_layout(hwc, layout, channels, str(f))
                yield str(f), {spec.name: sample.astype(spec.dtype)[np.newaxis]}

        super().__init__(
            chunks,
            [spec],
            num_samples=len(files),
            batch_size=batch_size,
            description=str(files[0].parent) if files else "",
        )


def _check_headers(files: Sequence[Path]) -> None:
    """Refuse files Pillow cannot identify, before any inference."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ImageError(f"{f}: not a readable image ({reason})") from None
