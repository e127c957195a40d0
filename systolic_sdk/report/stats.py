"""Mergeable statistics of the report: SQNR sums, value ranges, fixed-edge histograms."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from runtime_emulator import datapath as dp


@dataclass
class SqnrSum:
    """``sum ref^2`` and ``sum (ref - test)^2`` in float64, over any number of batches."""

    signal: float = 0.0
    noise: float = 0.0
    count: int = 0

    def add(self, reference: np.ndarray, test: np.ndarray) -> None:
        """Add one batch; float32 inputs are differenced in float32 (a relative error of
        at most 2**-24 per element) and squared and summed in float64."""
        r = np.asarray(reference).reshape(-1)
        t = np.asarray(test).reshape(-1)
        dtype = np.float32 if r.dtype == t.dtype == np.float32 else np.float64
        r, t = r.astype(dtype, copy=False), t.astype(dtype, copy=False)
        e = r - t
        self.signal += float(np.einsum("i,i->", r, r, dtype=np.float64))
        self.noise += float(np.einsum("i,i->", e, e, dtype=np.float64))
        self.count += r.size

    @property
    def db(self) -> float | None:
        """``10 log10(signal / noise)``: inf when equal, None before any data."""
        if self.count == 0:
            return None
        if self.noise == 0.0:
            return math.inf
        if self.signal == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)


@dataclass
class Extremes:
    """Running minimum and maximum of finite values."""

    lo: float = math.inf
    hi: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values)
        v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        if v.size:
            self.lo = min(self.lo, float(v.min()))
            self.hi = max(self.hi, float(v.max()))


@dataclass
class ClippedHistogram:
    """A histogram with fixed edges over ``[lo, hi]``, and the values that saturate.

    ``clip_lo``/``clip_hi`` are the real values of the integer range's ends,
    ``scale * (qmin - zp)`` and ``scale * (qmax - zp)``. A value is *clipped* when
    QuantizeLinear saturates it: ``rne(f32(x / scale)) + zp`` falls outside
    ``[qmin, qmax]`` (a value just beyond a clip line that rounds onto the range's end is
    not clipped).
    """

    lo: float
    hi: float
    bins: int
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    counts: np.ndarray = field(init=False)
    total: int = 0
    below: int = 0
    above: int = 0
    nonfinite: int = 0

    def __post_init__(self) -> None:
        if not self.hi > self.lo:
            self.hi = self.lo + 1.0
        self.counts = np.zeros(self.bins, np.int64)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, np.float64).reshape(-1)
        finite = np.isfinite(v)
        self.nonfinite += int(v.size - np.count_nonzero(finite))
        v = v[finite]
        self.total += v.size
        with np.errstate(over="ignore", invalid="ignore"):
            q = dp.rne(np.divide(v.astype(np.float32), np.float32(self.scale), dtype=np.float32))
        q = q.astype(np.float64) + self.zero_point
        self.below += int(np.count_nonzero(q < self.qmin))
        self.above += int(np.count_nonzero(q > self.qmax))
        self.counts += np.histogram(v, bins=self.bins, range=(self.lo, self.hi))[0]

    @property
    def clip_lo(self) -> float:
        return self.scale * (self.qmin - self.zero_point)

    @property
    def clip_hi(self) -> float:
        return self.scale * (self.qmax - self.zero_point)

    @property
    def clipped_fraction(self) -> float:
        return (self.below + self.above) / self.total if self.total else 0.0
