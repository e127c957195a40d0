"""Calibration data sources: files and folders opened as ``CalibrationDataReader``s.

:func:`open_source` recognises

* a single ``.npy`` (one array, single-input models) or ``.npz`` (arrays keyed by input
  name, or a single array for a single-input model);
* a protobuf ``.pb`` holding a TensorProto (single-input models) or a SequenceProto of
  TensorProtos (one per input, matched by name or position): the "bundle of tensors";
* a folder of ``.npy``/``.npz`` files, a folder of ``input_K.pb`` files, or a model folder
  with ONNX test-data sets ``test_data_set_N/input_K.pb``;
* a folder of images (PNG, JPEG, BMP), through a preprocessing method.

An array with the model input's rank holds a batch (first axis indexes samples); one
rank lower holds one sample. Files and folders are taken in natural sorted order
(``2`` before ``10``); ``dataset_size`` keeps the first N samples. Inputs are matched to
the model's by name, else by position; their count, shape and dtype are checked against
the model before any inference.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from systolic_sdk.calibration.reader import CalibrationDataReader
from systolic_sdk.errors import SdkError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
ARRAY_SUFFIXES = {".npy", ".npz"}


class DataSourceError(SdkError):
    """Calibration data cannot be read or does not match the model."""


def natural_key(text: str) -> list[object]:
    """Sort key putting ``input_2`` before ``input_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype, and dims (int, or None when symbolic)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...] | None

    def describe(self) -> str:
        if self.dims is None:
            return f"{self.dtype}"
        d = ",".join("?" if x is None else str(x) for x in self.dims)
        return f"{self.dtype} [{d}]"


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a sample must provide (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims = None
        if tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, dims))
    return specs


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(int(s)) for s in shape) + "]"


def match_inputs(
    arrays: dict[str, np.ndarray], specs: list[InputSpec], origin: str
) -> dict[str, np.ndarray]:
    """Map arrays to model inputs (by name, else position) and check count/shape/dtype.

    Returns ``{input name: array with a leading sample axis}``.
    """
    names = [s.name for s in specs]
    if len(arrays) != len(specs):
        raise DataSourceError(
            f"{origin}: holds {len(arrays)} tensor(s) but the model has {len(specs)} "
            f"input(s) ({', '.join(names)})"
        )
    if set(arrays) == set(names):
        ordered = [arrays[n] for n in names]
    else:
        ordered = list(arrays.values())
    out: dict[str, np.ndarray] = {}
    count = None
    for spec, arr in zip(specs, ordered, strict=True):
        arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
        if arr.dtype != spec.dtype:
            raise DataSourceError(
                f"{origin}: input '{spec.name}' expects {spec.dtype}, got {arr.dtype}"
            )
        if spec.dims is not None:
            rank = len(spec.dims)
            if arr.ndim == rank - 1:
                arr = arr[np.newaxis]
            if arr.ndim != rank or any(
                d is not None and d != s for d, s in zip(spec.dims[1:], arr.shape[1:], strict=True)
            ):
                raise DataSourceError(
                    f"{origin}: input '{spec.name}' expects {spec.describe()} "
                    f"(or one sample without the first axis), got {_shape_str(arr.shape)}"
                )
        elif arr.ndim == 0:
            arr = arr[np.newaxis]
        if count is None:
            count = arr.shape[0]
        elif arr.shape[0] != count:
            raise DataSourceError(
                f"{origin}: inputs hold different numbers of samples ({count} and "
                f"{arr.shape[0]} for '{spec.name}')"
            )
        out[spec.name] = arr
    return out


class ChunkReader(CalibrationDataReader):
    """Streams samples from chunks (each ``{input: array[n, ...]}``) in fixed batches.

    ``chunks`` is a callable returning a fresh iterator of ``(origin, arrays)`` pairs, so
    the reader can be rewound; chunks are loaded one at a time. When the model's batch
    dimension is fixed to ``k``, feeds hold exactly ``k`` samples.
    """

    def __init__(
        self,
        chunks,
        specs: list[InputSpec],
        *,
        num_samples: int,
        dataset_size: int | None = None,
        batch_size: int = 1,
        description: str = "",
    ) -> None:
        self._chunks = chunks
        self._specs = specs
        fixed = {s.dims[0] for s in specs if s.dims and s.dims[0] is not None}
        self._fixed = len(fixed) == 1
        self._batch = fixed.pop() if self._fixed else max(1, int(batch_size))
        total = num_samples if dataset_size is None else min(num_samples, dataset_size)
        self.num_samples = total
        self.description = description
        self.rewind()

    def rewind(self) -> None:
        """Start again from the first sample."""
        self._iter = self._feeds()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        remaining = self.num_samples
        pending: list[dict[str, np.ndarray]] = []
        rows = 0
        for origin, arrays in self._chunks():
            if remaining <= 0:
                break
            matched = match_inputs(arrays, self._specs, origin)
            n = next(iter(matched.values())).shape[0]
            take = min(n, remaining)
            remaining -= take
            pos = 0
            while pos < take:
                step = min(self._batch - rows, take - pos)
                pending.append({k: v[pos : pos + step] for k, v in matched.items()})
                rows += step
                pos += step
                if rows == self._batch:
                    yield _concat(pending)
                    pending, rows = [], 0
        if pending and self._fixed:
            warnings.warn(
                f"{self.description}: dropping the last {rows} sample(s): the model's batch "
                f"dimension is fixed at {self._batch}",
                stacklevel=2,
            )
        elif pending:
            yield _concat(pending)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return -(-self.num_samples // self._batch)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return {k: np.ascontiguousarray(v) for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------- file formats


def _load_npy(path: Path) -> dict[str, np.ndarray]:
    try:
        return {path.stem: np.load(path, mmap_mode="r", allow_pickle=False)}
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"{path}: not a readable .npy file ({exc})") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataSourceError(f"{path}: not a readable .npz file ({exc})") from None


def _load_pb(path: Path) -> dict[str, np.ndarray]:
    """A TensorProto, or a SequenceProto of tensors (the "bundle of tensors")."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataSourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise DataSourceError(f"{path}: empty file, expected a TensorProto")
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(data)
        ok = tensor.dims or tensor.raw_data or tensor.float_data or tensor.int64_data
        if ok and tensor.data_type:
            return {tensor.name or path.stem: numpy_helper.to_array(tensor)}
    except Exception:  # noqa: BLE001 - fall through to SequenceProto
        pass
    seq = onnx.SequenceProto()
    try:
        seq.ParseFromString(data)
    except Exception:  # noqa: BLE001
        seq = None
    if seq is not None and seq.tensor_values:
        out = {}
        for i, t in enumerate(seq.tensor_values):
            out[t.name or f"{path.stem}[{i}]"] = numpy_helper.to_array(t)
        return out
    raise DataSourceError(f"{path}: not a TensorProto or a SequenceProto of tensors")


def _leading(arrays: dict[str, np.ndarray], specs: list[InputSpec], origin: str) -> int:
    matched = match_inputs(arrays, specs, origin)
    return next(iter(matched.values())).shape[0]


def _visible(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def _test_data_sets(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_dir() and p.name.startswith("test_data_set_")]


def _input_pbs(folder: Path) -> list[Path]:
    return [p for p in _visible(folder) if p.is_file() and re.fullmatch(r"input_\d+\.pb", p.name)]


def _pb_set(folder: Path) -> dict[str, np.ndarray]:
    files = _input_pbs(folder)
    if not files:
        raise DataSourceError(f"{folder}: no input_K.pb files")
    out: dict[str, np.ndarray] = {}
    for f in files:
        arrays = _load_pb(f)
        if len(arrays) != 1:
            raise DataSourceError(f"{f}: expected one TensorProto")
        name, arr = next(iter(arrays.items()))
        out[name if name not in out else f.stem] = arr
    return out


def open_source(
    path: str | Path,
    model: onnx.ModelProto,
    *,
    dataset_size: int | None = None,
    preprocess: str | None = None,
    batch_size: int = 1,
) -> CalibrationDataReader:
    """Open calibration data at ``path`` for ``model`` (see the module docstring).

    ``preprocess`` names a method of :data:`~.preprocess.PREPROCESSORS` and applies to
    image folders only. Raises :class:`DataSourceError` with one line on bad input.
    """
    path = Path(path)
    if dataset_size is not None and int(dataset_size) < 1:
        raise DataSourceError(f"dataset_size must be >= 1, got {dataset_size}")
    specs = model_inputs(model)
    if not specs:
        raise DataSourceError("the model has no inputs to feed")
    if not path.exists():
        raise DataSourceError(f"{path}: no such file or folder")
    kwargs = {"dataset_size": dataset_size, "batch_size": batch_size}
    if path.is_file():
        reader = _open_file(path, specs, **kwargs, preprocess=preprocess, model=model)
    else:
        reader = _open_folder(path, specs, **kwargs, preprocess=preprocess, model=model)
    from systolic_sdk.calibration.images import ImageFolderReader

    if preprocess is not None and str(preprocess).lower() != "none":
        if not isinstance(reader, ImageFolderReader):
            warnings.warn(
                f"{path}: preprocessing '{preprocess}' applies to images only; "
                "the arrays are fed as they are",
                stacklevel=2,
            )
    return reader


def _single(path: Path, specs, loader, **kwargs) -> ChunkReader:
    arrays = loader(path)
    n = _leading(arrays, specs, str(path))
    return ChunkReader(
        lambda: iter([(str(path), arrays)]), specs, num_samples=n, description=str(path), **kwargs
    )


def _open_file(path: Path, specs, *, preprocess, model, **kwargs) -> CalibrationDataReader:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _single(path, specs, _load_npy, **kwargs)
    if suffix == ".npz":
        return _single(path, specs, _load_npz, **kwargs)
    if suffix == ".pb":
        return _single(path, specs, _load_pb, **kwargs)
    if suffix in IMAGE_SUFFIXES:
        from systolic_sdk.calibration.images import ImageFolderReader

        return ImageFolderReader([path], model, preprocess=preprocess, **kwargs)
    raise DataSourceError(
        f"{path}: unsupported calibration data file (expected .npy, .npz, .pb, or an image)"
    )


def _placeholder(dtype: np.dtype, shape: Sequence[int]) -> np.ndarray:
    """A zero-memory array with ``dtype`` and ``shape`` (for checks before loading)."""
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype=dtype), shape=tuple(shape), strides=(0,) * len(shape)
    )


def _header(path: Path) -> dict[str, np.ndarray]:
    """Placeholders with the names, dtypes and shapes a file holds, without its data."""
    suffix = path.suffix.lower()
    if path.is_dir():
        return {k: _placeholder(v.dtype, v.shape) for k, v in _pb_set(path).items()}
    if suffix == ".npy":
        return {k: _placeholder(v.dtype, v.shape) for k, v in _load_npy(path).items()}
    if suffix == ".npz":
        out = {}
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with zf.open(info) as fh:
                        version = np.lib.format.read_magic(fh)
                        reader = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = reader(fh)
                    out[info.filename[:-4]] = _placeholder(dtype, shape)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataSourceError(f"{path}: not a readable .npz file ({exc})") from None
        if not out:
            raise DataSourceError(f"{path}: empty .npz file")
        return out
    return _load_pb(path)


def _files_reader(files: list[Path], loader, specs, origin: Path, **kwargs) -> ChunkReader:
    """One chunk per file (or test-data folder); all are checked before any inference."""
    counts = []
    size = kwargs.get("dataset_size")
    for f in files:
        counts.append(_leading(_header(f), specs, str(f)))
        if size and sum(counts) >= size:
            break
    files = files[: len(counts)]

    def chunks():
        for f in files:
            yield str(f), loader(f)

    return ChunkReader(chunks, specs, num_samples=sum(counts), description=str(origin), **kwargs)


def _open_folder(folder: Path, specs, *, preprocess, model, **kwargs) -> CalibrationDataReader:
    sets = _test_data_sets(folder)
    if sets:
        return _files_reader(sets, _pb_set, specs, folder, **kwargs)
    pbs = _input_pbs(folder)
    if pbs:
        return _files_reader([folder], _pb_set, specs, folder, **kwargs)
    entries = _visible(folder)
    files = [p for p in entries if p.is_file()]
    if not files:
        raise DataSourceError(f"{folder}: empty folder, no calibration data")
    kinds = {p.suffix.lower() for p in files}
    if kinds <= ARRAY_SUFFIXES:
        loaders = {".npy": _load_npy, ".npz": _load_npz}

        def load_any(p: Path) -> dict[str, np.ndarray]:
            return loaders[p.suffix.lower()](p)

        return _files_reader(files, load_any, specs, folder, **kwargs)
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if images and not others:
        from systolic_sdk.calibration.images import ImageFolderReader

        return ImageFolderReader(images, model, preprocess=preprocess, **kwargs)
    if images:
        raise DataSourceError(
            f"{folder}: mixes images with other files (e.g. {others[0].name}); "
            "keep only images in a calibration image folder"
        )
    raise DataSourceError(
        f"{folder}: no calibration data found (expected .npy/.npz files, input_K.pb, "
        f"test_data_set_N/ folders, or images; found e.g. {files[0].name})"
    )
