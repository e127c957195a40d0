"""Input samples read whole (for validate and report), then cut into batches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from systolic_sdk.calibration.session import required_inputs
from systolic_sdk.calibration.sources import InputSpec, model_inputs
from systolic_sdk.errors import SdkError

Feed = dict[str, np.ndarray]


def load_samples(data: Path, model: onnx.ModelProto, max_samples: int | None) -> Feed:
    """Every model input as one array of samples (first axis), at most ``max_samples``.

    An ``.npz`` holding every input by name is read directly (other arrays, such as
    labels, are ignored); anything else goes through the calibration data sources.
    """
    from systolic_sdk.calibration import open_source

    specs = model_inputs(model)
    names = [spec.name for spec in specs]
    data = Path(data)
    if data.is_file() and data.suffix == ".npz":
        try:
            with np.load(data) as z:
                if all(n in z.files for n in names):
                    arrays = {n: z[n] for n in names}
                    for spec in specs:
                        _check_fits(data, spec, arrays[spec.name])
                    n = min(len(a) for a in arrays.values()) if arrays else 0
                    if max_samples:
                        n = min(n, max_samples)
                    if n == 0:
                        raise SdkError(f"{data}: no samples")
                    return {k: np.ascontiguousarray(a[:n]) for k, a in arrays.items()}
        except (OSError, ValueError, EOFError) as exc:
            raise SdkError(f"{data}: cannot read: {exc}") from None
    reader = open_source(data, model, dataset_size=max_samples, batch_size=1)
    feeds = [dict(f) for f in reader]
    if not feeds:
        raise SdkError(f"{data}: no samples")
    out: Feed = {}
    for name in feeds[0]:
        parts = [np.asarray(f[name]) for f in feeds]
        if len({p.shape[1:] for p in parts}) > 1:
            raise SdkError(f"{data}: input '{name}' has samples of different shapes")
        out[name] = np.concatenate(parts)
    if max_samples:
        out = {k: v[:max_samples] for k, v in out.items()}
    return out


def _check_fits(data: Path, spec: InputSpec, a: np.ndarray) -> None:
    """One line naming the file and the input when ``a`` (a batch of samples: its first
    axis included) does not fit the model input ``spec``."""
    spec = replace(spec, dims=spec.dims or ())  # an input without a shape: a scalar
    fits = a.dtype == spec.dtype and a.ndim == len(spec.dims)
    fits = fits and all(
        d is None or d == n for d, n in zip(spec.dims[1:], a.shape[1:], strict=False)
    )
    if not fits:
        got = ",".join(map(str, a.shape))
        raise SdkError(
            f"{data}: input '{spec.name}' expects {spec.describe()}, got {a.dtype} [{got}]"
        )


def sample_count(samples: Feed) -> int:
    return min((len(v) for v in samples.values()), default=0)


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size fixed by the model's first input (a numeric first dim), if any."""
    for vi in required_inputs(model)[:1]:
        shape = vi.type.tensor_type.shape if vi.type.HasField("tensor_type") else None
        if shape is not None and len(shape.dim) and shape.dim[0].HasField("dim_value"):
            return int(shape.dim[0].dim_value)
    return None


def batches(samples: Feed, size: int, *, whole: bool = False) -> list[Feed]:
    """Consecutive slices of ``size`` samples; with ``whole``, only full slices."""
    n = sample_count(samples)
    if whole:
        n -= n % size
    return [{k: v[i : i + size] for k, v in samples.items()} for i in range(0, n, size)]
