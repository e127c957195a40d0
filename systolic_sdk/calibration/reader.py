"""Calibration data readers: the onnxruntime-compatible ``CalibrationDataReader``."""

from __future__ import annotations

import abc
from collections.abc import Iterator

import numpy as np


class CalibrationDataReader(abc.ABC):
    """A source of feed dicts, one sample (or batch) per ``get_next()`` call.

    Same contract as ``onnxruntime.quantization.CalibrationDataReader``: ``get_next``
    returns ``{input_name: ndarray}`` or ``None`` when exhausted.

    Optional extras: ``__len__`` (number of feeds, for the progress bar's ETA) and a
    ``collect_options`` dict (``batch_size``, ``progress``, ``skip_nonfinite``) that
    :func:`systolic_sdk.calibration.calibrate` uses where its caller gives none.
    """

    @abc.abstractmethod
    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed dict, or None when there are no more samples."""

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (feed := self.get_next()) is not None:
            yield feed

    def __len__(self) -> int:  # pragma: no cover - optional, as in onnxruntime
        raise NotImplementedError


class ArrayReader(CalibrationDataReader):
    """Feeds from in-memory arrays: ``{input_name: array[N, ...]}``, sliced along axis 0."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int = 1) -> None:
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError("all calibration arrays must have the same number of samples")
        self._arrays = arrays
        self._n = lengths.pop()
        self._batch = max(1, batch_size)
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= self._n:
            return None
        sl = slice(self._pos, self._pos + self._batch)
        self._pos += self._batch
        return {k: v[sl] for k, v in self._arrays.items()}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return -(-self._n // self._batch)


class ReplayReader(CalibrationDataReader):
    """A reader without ``rewind()`` made re-readable: the feeds it gives are kept as
    they are read (so memory grows with the samples) and replayed after a rewind."""

    def __init__(self, reader: CalibrationDataReader) -> None:
        self._source: CalibrationDataReader | None = reader
        self._seen: list[dict[str, np.ndarray]] = []
        self._pos = 0
        self.collect_options = getattr(reader, "collect_options", None) or {}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos < len(self._seen):
            self._pos += 1
            return self._seen[self._pos - 1]
        feed = self._source.get_next() if self._source is not None else None
        if feed is None:
            self._source = None
            return None
        self._seen.append(feed)
        self._pos += 1
        return feed

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self._seen) if self._source is None else len(self._source)


def replayable(reader):
    """``reader`` itself when it can rewind (or is not a reader), else a ReplayReader."""
    if not hasattr(reader, "get_next") or callable(getattr(reader, "rewind", None)):
        return reader
    return ReplayReader(reader)
