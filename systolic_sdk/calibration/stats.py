"""Streaming, mergeable per-tensor statistics.

Every statistic here is updated one batch at a time, never keeps activations, and has a
``merge`` that combines two partial results (computed on disjoint parts of the data,
possibly in other processes) into the statistic of the whole:

* :class:`MinMaxStats` - global min/max (exact), the sums of the per-sample minima and
  maxima (kept as exact integers, so averages do not depend on the merge order), and an
  optional exponential moving average over samples (merged exactly in real arithmetic;
  it depends on sample order, so ``a.merge(b)`` means "a's samples came first").
* :class:`HistogramStats` - a histogram with power-of-two bin widths aligned at zero.

Histogram binning scheme (why merging is exact): bin ``i`` at exponent ``e`` covers
``[i * 2**e, (i + 1) * 2**e)``. Scaling by a power of two is exact in binary floating
point, so the bin of a value is computed without rounding. Doubling the width maps bin
``i`` to bin ``i >> 1`` - two whole bins merge into one, nothing is split. The exponent
is always the smallest one (not below ``MIN_EXPONENT``) for which the range of the data
seen so far, widened to include 0, fits in ``num_bins`` bins. That exponent is a
function of the data's min and max only, so the histogram of a stream equals the
histogram computed in one pass, in any order, and the merge of two halves equals the
histogram of the whole, bin for bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Fixed-point scale for exact sums of floats: every finite float64 is an integer
# multiple of 2**-1074, so sums of ``value * 2**1074`` as Python ints are exact.
_FIX_SHIFT = 1074
MIN_EXPONENT = -64
DEFAULT_NUM_BINS = 4096


def _to_fixed(values: np.ndarray) -> int:
    """Exact sum of ``values`` scaled by ``2**1074``, as a Python int."""
    total = 0
    for v in np.asarray(values, dtype=np.float64).ravel().tolist():
        num, den = v.as_integer_ratio()
        total += num << (_FIX_SHIFT - (den.bit_length() - 1))
    return total


def _from_fixed(total: int, count: int) -> float:
    """``total / (count * 2**1074)`` rounded once to the nearest float."""
    from fractions import Fraction

    return float(Fraction(total, count << _FIX_SHIFT))


def per_sample_view(values: np.ndarray, batch: int) -> np.ndarray:
    """``values`` as ``[samples, -1]``: split along axis 0 when it is the batch axis.

    A tensor whose first dimension is not ``batch`` does not follow the batch (it is
    computed from constants, or mixes samples); it counts as one observation shared by
    the ``batch`` samples.
    """
    if batch > 1 and values.ndim >= 1 and values.shape[0] == batch:
        return values.reshape(batch, -1)
    return values.reshape(1, -1)


@dataclass
class MinMaxStats:
    """Global and per-sample extremes of one tensor.

    ``averaging_constant`` enables the exponential moving average over samples
    (``ema = ema + c * (sample_value - ema)``, started at the first sample's value).
    """

    averaging_constant: float | None = None
    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    sum_min: int = 0  # exact fixed-point sums of per-sample minima / maxima
    sum_max: int = 0
    # Moving average as (first value, zero-started accumulator, decay (1-c)**count).
    _ema_min: tuple[float, float, float] | None = field(default=None, repr=False)
    _ema_max: tuple[float, float, float] | None = field(default=None, repr=False)

    def update(self, values: np.ndarray, batch: int = 1) -> None:
        """Add one batch of one tensor; ``batch`` samples share the tensor's axis 0."""
        if values.size == 0:
            return
        rows = per_sample_view(values, batch)
        mins = rows.min(axis=1)
        maxs = rows.max(axis=1)
        weight = batch if rows.shape[0] == 1 else 1
        if weight > 1:
            mins = np.repeat(mins, weight)
            maxs = np.repeat(maxs, weight)
        self.update_per_sample(mins, maxs)

    def update_per_sample(self, mins: np.ndarray, maxs: np.ndarray) -> None:
        """Add samples given by their own minima and maxima (in sample order)."""
        mins = np.asarray(mins, dtype=np.float64)
        maxs = np.asarray(maxs, dtype=np.float64)
        if mins.size == 0:
            return
        self.count += int(mins.size)
        self.min = min(self.min, float(mins.min()))
        self.max = max(self.max, float(maxs.max()))
        self.sum_min += _to_fixed(mins)
        self.sum_max += _to_fixed(maxs)
        if self.averaging_constant is not None:
            c = float(self.averaging_constant)
            self._ema_min = _ema_merge(self._ema_min, _ema_of(mins, c))
            self._ema_max = _ema_merge(self._ema_max, _ema_of(maxs, c))

    def merge(self, other: MinMaxStats) -> MinMaxStats:
        """The statistics of this data followed by ``other``'s (a new object)."""
        if self.averaging_constant != other.averaging_constant:
            raise ValueError("cannot merge moving averages with different constants")
        out = MinMaxStats(self.averaging_constant)
        out.count = self.count + other.count
        out.min = min(self.min, other.min)
        out.max = max(self.max, other.max)
        out.sum_min = self.sum_min + other.sum_min
        out.sum_max = self.sum_max + other.sum_max
        out._ema_min = _ema_merge(self._ema_min, other._ema_min)
        out._ema_max = _ema_merge(self._ema_max, other._ema_max)
        return out

    @property
    def mean_min(self) -> float:
        """Average over samples of the per-sample minimum."""
        return _from_fixed(self.sum_min, self.count) if self.count else math.nan

    @property
    def mean_max(self) -> float:
        """Average over samples of the per-sample maximum."""
        return _from_fixed(self.sum_max, self.count) if self.count else math.nan

    @property
    def moving_min(self) -> float:
        """Exponential moving average of the per-sample minimum."""
        return _ema_value(self._ema_min)

    @property
    def moving_max(self) -> float:
        """Exponential moving average of the per-sample maximum."""
        return _ema_value(self._ema_max)


def _ema_of(values: np.ndarray, c: float) -> tuple[float, float, float]:
    """EMA state of a sequence: (first, sum_k c(1-c)^(n-1-k) x_k, (1-c)^n)."""
    n = values.size
    decay = (1.0 - c) ** np.arange(n - 1, -1, -1, dtype=np.float64)
    return float(values[0]), float(c * np.dot(decay, values)), (1.0 - c) ** n


def _ema_merge(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None:
        return b
    if b is None:
        return a
    return a[0], b[2] * a[1] + b[1], a[2] * b[2]


def _ema_value(state: tuple | None) -> float:
    if state is None:
        return math.nan
    first, acc, decay = state
    return acc + decay * first


@dataclass
class HistogramStats:
    """Histogram of one tensor's values with exact, order-independent merging.

    ``counts[j]`` counts values in ``[(offset + j) * 2**exponent, (offset + j + 1) *
    2**exponent)``; the covered range always includes 0. Also tracks the exact min/max.
    """

    num_bins: int = DEFAULT_NUM_BINS
    exponent: int = MIN_EXPONENT
    offset: int = 0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    min: float = math.inf
    max: float = -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent)

    def edges(self) -> np.ndarray:
        """Bin edges (``len(counts) + 1`` floats)."""
        idx = np.arange(self.offset, self.offset + self.counts.size + 1, dtype=np.float64)
        return idx * self.width

    def _fits(self, lo: float, hi: float, exponent: int) -> bool:
        return (
            math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent))
            < self.num_bins
        )

    def _exponent_for(self, lo: float, hi: float) -> int:
        """Smallest exponent >= MIN_EXPONENT at which [lo, hi] (lo <= 0 <= hi) fits."""
        span = hi - lo
        if span <= 0.0:
            return MIN_EXPONENT
        e = max(MIN_EXPONENT, math.frexp(span / self.num_bins)[1] - 1)
        while e > MIN_EXPONENT and self._fits(lo, hi, e - 1):
            e -= 1
        while not self._fits(lo, hi, e):
            e += 1
        return e

    def _rebin(self, exponent: int, lo_index: int, hi_index: int) -> np.ndarray:
        """Counts coarsened to ``exponent`` on bins ``lo_index..hi_index``."""
        out = np.zeros(hi_index - lo_index + 1, dtype=np.int64)
        shift = exponent - self.exponent
        idx = np.arange(self.offset, self.offset + self.counts.size, dtype=np.int64) >> shift
        nz = self.counts != 0
        np.add.at(out, idx[nz] - lo_index, self.counts[nz])
        return out

    def _layout(self, lo: float, hi: float) -> tuple[int, int, int]:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        e = self._exponent_for(lo, hi)
        lo_i = math.floor(math.ldexp(lo, -e))
        hi_i = math.floor(math.ldexp(hi, -e))
        return e, lo_i, hi_i

    def _grown(self, vmin: float, vmax: float) -> tuple[int, int, int, float, float]:
        """Layout ``(exponent, first bin, last bin)`` and range after adding [vmin, vmax]."""
        new_min, new_max = min(self.min, vmin), max(self.max, vmax)
        if new_min == self.min and new_max == self.max and self.total:
            hi_i = self.offset + self.counts.size - 1
            return self.exponent, self.offset, hi_i, new_min, new_max
        return (*self._layout(new_min, new_max), new_min, new_max)

    def _commit(
        self, layout: tuple[int, int, int, float, float], batch: np.ndarray, at: int = 0
    ) -> None:
        """Adopt ``layout`` and add ``batch``: counts of its bins ``first + at ...``."""
        e, lo_i, hi_i, new_min, new_max = layout
        if (e, lo_i, hi_i) == (self.exponent, self.offset, self.offset + self.counts.size - 1):
            counts = self.counts
        elif not self.total:
            counts = np.zeros(hi_i - lo_i + 1, np.int64)
        else:
            counts = self._rebin(e, lo_i, hi_i)
        counts[at : at + batch.size] += batch
        self.exponent, self.offset, self.counts = e, lo_i, counts
        self.min, self.max = new_min, new_max

    def update(
        self, values: np.ndarray, vmin: float | None = None, vmax: float | None = None
    ) -> None:
        """Add the values of one batch (all finite); ``vmin``/``vmax``: their extremes,
        when already known."""
        if values.size == 0:
            return
        values, vmin, vmax = _float_values(values, vmin, vmax)
        layout = self._grown(vmin, vmax)
        e, lo_i, hi_i = layout[:3]
        self._commit(layout, bin_counts(values, e, lo_i, hi_i - lo_i + 1))

    def merge(self, other: HistogramStats) -> HistogramStats:
        """The histogram of both data sets (a new object); exact and commutative."""
        if self.num_bins != other.num_bins:
            raise ValueError("cannot merge histograms with different bin budgets")
        out = HistogramStats(self.num_bins)
        parts = [h for h in (self, other) if h.total]
        if not parts:
            return out
        out.min = min(h.min for h in parts)
        out.max = max(h.max for h in parts)
        e, lo_i, hi_i = out._layout(out.min, out.max)
        out.exponent, out.offset = e, lo_i
        out.counts = sum(h._rebin(e, lo_i, hi_i) for h in parts)
        return out


def bin_index(value: float, exponent: int) -> int:
    """``floor(value / 2**exponent)``, exactly (the bin of ``value`` at that width)."""
    return math.floor(math.ldexp(value, -exponent))


# Values binned per step: the scratch arrays stay in the CPU cache and are reused.
BIN_CHUNK = 1 << 15


def bin_counts(values: np.ndarray, exponent: int, first: int, size: int) -> np.ndarray:
    """Counts of finite ``values`` on bins ``first .. first + size - 1`` of width
    ``2**exponent`` (every value must fall in them): ``floor(v / 2**exponent)``, exact."""
    scale = values.dtype.type(math.ldexp(1.0, -exponent))
    flat = values.ravel()
    step = max(BIN_CHUNK, 4 * size)  # the per-step counts cost O(size)
    scaled_buf = np.empty(min(flat.size, step), values.dtype)
    # Bins go float -> int32 -> intp: two vectorized casts, faster than one float -> int64.
    # intp: np.bincount takes it as it is; another type would be converted while it holds
    # the GIL, which the collector's main thread needs meanwhile.
    int32_buf = np.empty(scaled_buf.size, np.int32)
    index_buf = np.empty(scaled_buf.size, np.intp)
    counts = np.zeros(size, np.int64)
    for start in range(0, flat.size, step):
        part = flat[start : start + step]
        scaled, bins, index = (
            scaled_buf[: part.size],
            int32_buf[: part.size],
            index_buf[: part.size],
        )
        np.multiply(part, scale, out=scaled)  # exact: a power of two (or an underflow)
        np.floor(scaled, out=scaled)
        if exponent > 0:
            # A tiny negative value can underflow to -0.0 and land in bin 0, not -1.
            tiny = (scaled == 0) & (part < 0)
            if tiny.any():
                scaled[tiny] = -1
        bins[...] = scaled  # whole numbers, bin indices: exact in int32
        np.subtract(bins, first, out=index, casting="unsafe")
        counts += np.bincount(index, minlength=size)
    return counts


Bounds = tuple[float | None, float | None]
# Largest span of fine bins the grouped update counts at once (larger spans: one by one).
MAX_SHARED_BINS = 1 << 16


def clip_value(value: float, bounds: Bounds) -> float:
    """``min(max(value, lo), hi)`` with None for no bound (onnx Clip and Relu)."""
    lo, hi = bounds
    if lo is not None:
        value = max(value, lo)
    if hi is not None:
        value = min(value, hi)
    return value


def clip_values(values: np.ndarray, bounds: Bounds) -> np.ndarray:
    """:func:`clip_value` elementwise (the same selections, no arithmetic)."""
    lo, hi = bounds
    if lo is not None:
        values = np.maximum(values, values.dtype.type(lo))
    if hi is not None:
        values = np.minimum(values, values.dtype.type(hi))
    return values


def update_clipped(
    hists: list[HistogramStats],
    bounds: list[Bounds],
    values: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
) -> None:
    """``hists[j].update(clip(values, *bounds[j]))`` for every j, binning ``values`` once.

    For a tensor and the outputs of Relu/Clip/Flatten applied to it: the values are
    counted on the finest bins any of the histograms needs; a clipped value's bin is the
    clipped bin (``floor`` is monotone and the clip keeps a value or replaces it by the
    data's clipped extreme), and coarser bins are whole groups of finer ones, so each
    histogram gets exactly the counts :meth:`HistogramStats.update` would give it.
    """
    if values.size == 0:
        return
    values, vmin, vmax = _float_values(values, vmin, vmax)
    ext = [(clip_value(vmin, b), clip_value(vmax, b)) for b in bounds]
    layouts = [h._grown(lo, hi) for h, (lo, hi) in zip(hists, ext, strict=True)]
    fine = min(lay[0] for lay in layouts)
    ends = [bin_index(v, fine) for pair in ext for v in pair]
    first = min(bin_index(vmin, fine), *ends)
    last = max(bin_index(vmax, fine), *ends)
    if len(hists) == 1 or last - first >= MAX_SHARED_BINS:
        for h, b, (lo, hi) in zip(hists, bounds, ext, strict=True):
            h.update(clip_values(values, b), lo, hi)
        return
    counts = bin_counts(values, fine, first, last - first + 1)
    for h, lay, (lo, hi) in zip(hists, layouts, ext, strict=True):
        part, start = _clipped_coarse(
            counts, first, bin_index(lo, fine), bin_index(hi, fine), lay[0] - fine
        )
        h._commit(lay, part, start - lay[1])


def _clipped_coarse(
    counts: np.ndarray, first: int, lo: int, hi: int, shift: int
) -> tuple[np.ndarray, int]:
    """``counts`` (bins ``first ...``) with bins below ``lo`` / above ``hi`` moved onto them,
    then grouped ``2**shift`` at a time: ``(counts of coarse bins start ..., start)``."""
    a, z = lo - first, hi - first
    part = counts[a : z + 1].copy()
    part[0] += counts[:a].sum()
    part[-1] += counts[z + 1 :].sum()
    if shift == 0:
        return part, lo
    g0, g1 = lo >> shift, hi >> shift
    starts = np.arange(g0, g1 + 1, dtype=np.int64) << shift
    starts[0] = lo
    return np.add.reduceat(part, starts - lo), g0


@dataclass
class TensorStats:
    """Everything collected for one tensor: min/max always, a histogram if asked."""

    minmax: MinMaxStats
    histogram: HistogramStats | None = None

    def merge(self, other: TensorStats) -> TensorStats:
        hist = None
        if self.histogram is not None and other.histogram is not None:
            hist = self.histogram.merge(other.histogram)
        elif self.histogram is not None or other.histogram is not None:
            raise ValueError("cannot merge statistics with and without histograms")
        return TensorStats(self.minmax.merge(other.minmax), hist)


def merge_all(parts: list[dict[str, TensorStats]]) -> dict[str, TensorStats]:
    """Merge per-tensor statistics from several runs (in run order)."""
    out: dict[str, TensorStats] = {}
    for part in parts:
        for name, st in part.items():
            out[name] = out[name].merge(st) if name in out else st
    return out


def _float_values(
    values: np.ndarray, vmin: float | None, vmax: float | None
) -> tuple[np.ndarray, float, float]:
    """``values`` as float32/float64 with their extremes (computed unless both given)."""
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float32)
    if vmin is None or vmax is None:
        vmin, vmax = float(values.min()), float(values.max())
    return values, vmin, vmax
