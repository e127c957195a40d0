"""Calibrators: each turns the collected statistics of a tensor into a range (rmin, rmax).

========== ================================================================ ===========
method     range                                                            statistics
========== ================================================================ ===========
naive      global min and max over all samples                              min/max
minmax     global min and max; with ``moving_average=True`` the exponential min/max
           moving average of per-sample extremes (``averaging_constant``)
minmax_avg average over samples of the per-sample min and max               min/max
percentile ``|x|`` at the ``percentile`` (default 99.999), clipped to data  histogram
entropy    KL-divergence threshold on ``|x|`` (TensorRT's method; the     histogram
           quantized bins double for one-sided data)
mse        threshold on ``|x|`` minimizing the expected quantization MSE    histogram
========== ================================================================ ===========

The threshold methods search a threshold ``t`` on the distribution of ``|x|`` and return
``(max(min, -t), min(max, t))``: the data range clipped to ``[-t, t]``. Ranges are not
widened to include 0 here; the quantizer does that when it chooses a zero point.

Entropy follows TensorRT's description: every bin of a level of Q, the last level included
(it takes the bins left over by ``i // nq``), shares the level's mass. onnxruntime's
``get_entropy_threshold`` leaves those left-over bins at Q = 0 (and truncates Q to
integers), which adds a large divergence to every candidate whose left-over bins hold data
and so favours thresholds in an empty tail. On a tensor made of a few spikes (a first
convolution's biases, where the input pixels are 0) the two choose very differently: on
digits_cnn's first conv output (range 2.37) onnxruntime's algorithm with 256 levels picks
2.24 on its own 4096-bin histogram and 2.25 on ours (mirrored ``|x|``); the same code with
the left-over bins given their level's share picks 0.506, as we do. TensorRT's criterion
itself clips that tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from systolic_sdk.calibration.stats import HistogramStats, TensorStats
from systolic_sdk.errors import SdkError


class CalibrationError(SdkError):
    """Calibration cannot proceed with the given data, model or options."""


@dataclass(frozen=True)
class Method:
    """A calibrator: whether it needs a histogram, its options and its range function."""

    name: str
    needs_histogram: bool
    options: dict[str, object]  # option name -> default
    compute: Callable[..., tuple[float, float]]


def _naive(st: TensorStats) -> tuple[float, float]:
    return st.minmax.min, st.minmax.max


def _minmax(
    st: TensorStats, moving_average: bool = False, averaging_constant: float = 0.01
) -> tuple[float, float]:
    if moving_average:
        return st.minmax.moving_min, st.minmax.moving_max
    return st.minmax.min, st.minmax.max


def _minmax_avg(st: TensorStats) -> tuple[float, float]:
    return st.minmax.mean_min, st.minmax.mean_max


def abs_histogram(h: HistogramStats) -> np.ndarray:
    """Counts of ``|x|`` on bins ``[k*w, (k+1)*w)`` (negative bins folded onto positive).

    A negative bin ``[-(k+1)*w, -k*w)`` holds ``|x|`` in ``(k*w, (k+1)*w]`` and is added to
    bin ``k``; only values exactly on a negative edge land one bin low.
    """
    idx = np.arange(h.offset, h.offset + h.counts.size, dtype=np.int64)
    folded = np.where(idx >= 0, idx, -idx - 1)
    out = np.zeros(int(folded.max()) + 1, dtype=np.int64)
    np.add.at(out, folded, h.counts)
    return out


def _clip(st: TensorStats, t: float) -> tuple[float, float]:
    lo, hi = st.minmax.min, st.minmax.max
    return max(lo, -t), min(hi, t)


def _percentile(st: TensorStats, percentile: float = 99.999) -> tuple[float, float]:
    if not 0.0 < percentile <= 100.0:
        raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
    h = st.histogram
    counts = abs_histogram(h)
    cdf = np.cumsum(counts)
    k = int(np.searchsorted(cdf, cdf[-1] * (percentile / 100.0), side="left"))
    return _clip(st, (k + 1) * h.width)


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """A normalized distribution with empty bins given mass ``eps`` (no zero for the log)."""
    q = np.where(p == 0, eps, p)
    return q / q.sum()


def _entropy(st: TensorStats, num_quantized_bins: int = 128) -> tuple[float, float]:
    h = st.histogram
    counts = abs_histogram(h).astype(np.float64)
    width = h.width
    # Search on at most 2048 bins: coarsen by whole pairs of bins (exact).
    while counts.size > 2048:
        counts = np.add.reduceat(counts, np.arange(0, counts.size, 2))
        width *= 2.0
    n = counts.size
    if n > 1:
        # The spike of exact zeros (ReLU outputs, padding) would dominate the divergence
        # and pull the threshold down; flatten it as TensorRT-style calibrators do.
        counts[0] = counts[1]
    if st.minmax.min >= 0.0 or st.minmax.max <= 0.0:
        # One-sided data: an asymmetric 8-bit range spends all its levels on [0, t].
        num_quantized_bins *= 2
    if n <= num_quantized_bins:
        return _clip(st, n * width)
    stride = max(1, (n - num_quantized_bins) // 256)  # at most ~256 candidate thresholds
    candidates = np.arange(num_quantized_bins, n + 1, stride)
    kl = kl_divergences(counts, num_quantized_bins, candidates)
    if np.isnan(kl).all():
        return _clip(st, n * width)
    best = int(np.nanargmin(kl))  # the first of equal minima
    return _clip(st, int(candidates[best]) * width)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """``x * log(x)`` elementwise, 0 at 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


SMOOTHING = 1e-4  # mass given to an empty bin of a normalized distribution


def _level_plogq(
    mass: np.ndarray, filled: np.ndarray, lo: np.ndarray, hi: np.ndarray, extra: object
) -> np.ndarray:
    """``(level mass + extra) * log(level mass / non-empty bins)`` of the levels
    ``[lo, hi)``, 0 for a level without a non-empty bin (its P mass there is 0)."""
    q_sum = mass[hi] - mass[lo]
    q_cnt = filled[hi] - filled[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(q_cnt > 0, (q_sum + extra) * np.log(q_sum / q_cnt), 0.0)


def kl_divergences(counts: np.ndarray, nq: int, thresholds: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each candidate threshold ``i`` of ``thresholds`` (bins, ``nq <= i <=
    counts.size``; TensorRT's entropy method), NaN where P or Q is empty.

    P is ``counts[:i]`` with the mass beyond added to its last bin; Q is ``counts[:i]``
    quantized to ``nq`` levels (``i // nq`` bins each, the last level takes the rest), a
    level's mass spread evenly over its non-empty bins. Both are normalized, then every
    empty bin gets mass ``SMOOTHING`` and they are normalized again. Computed in closed
    form for all candidates at once after prefix sums, in O(candidates + distinct level
    widths * nq) (candidates of one width share all levels but the last): a P bin
    and its Q bin are empty together (except a last bin holding only the mass beyond
    ``i``), so with ``Zp``/``Zq`` the sums after smoothing,
    ``KL = log(Zq / Zp) + (sum over non-empty bins of P log(P / Q)) / Zp``, and that sum
    comes from prefix sums of ``c log c`` and per-level masses. Equal to the bin-by-bin
    sum up to rounding.
    """
    counts = np.asarray(counts, dtype=np.float64)
    i = np.asarray(thresholds, dtype=np.int64)
    eps = SMOOTHING
    nonzero = counts != 0
    mass = np.concatenate([[0.0], np.cumsum(counts)])  # whole numbers: exact
    filled = np.concatenate([[0], np.cumsum(nonzero)])
    plogp_prefix = np.concatenate([[0.0], np.cumsum(_xlogx(counts))])
    total = float(mass[-1])
    below = mass[i]
    tail = total - below
    last = counts[i - 1]
    tail_alone = (last == 0) & (tail > 0)  # the last P bin holds only the tail: Q is 0
    # Level k < nq - 1 covers bins [k * width, (k + 1) * width), width = i // nq, the last
    # level [(nq - 1) * width, i): the first levels depend on the width alone (few values).
    width = i // nq
    widths, which = np.unique(width, return_inverse=True)
    edges = np.arange(nq)[None, :] * widths[:, None]
    head = _level_plogq(mass, filled, edges[:, :-1], edges[:, 1:], 0.0).sum(axis=1)
    start = (nq - 1) * width
    with np.errstate(divide="ignore", invalid="ignore"):
        extra = np.where(tail_alone, 0.0, tail)  # the tail, on the last level's last bin
        plogq_raw = head[which] + _level_plogq(mass, filled, start, i, extra)
        # sum over non-empty bins of p log p, with p the counts (the tail in the last bin)
        plogp = plogp_prefix[i - 1] + _xlogx(last + tail)
        w_total = total - np.where(tail_alone, tail, 0.0)
        empty_q = i - filled[i]
        empty_p = empty_q - tail_alone
        zp = 1.0 + eps * empty_p
        zq = 1.0 + eps * empty_q
        # sum_j P_j log(P_j / Q_j) over bins where both are non-empty, P = p / T, Q = q / M
        core = (plogp - plogq_raw) / total - np.log(total) + (w_total / total) * np.log(below)
        # a tail-only last bin: P log(P / eps) instead of P log(P / Q)
        core -= np.where(tail_alone, (tail / total) * math.log(eps), 0.0)
        kl = np.log(zq / zp) + core / zp
    kl[(total == 0) | (below == 0)] = np.nan
    return kl


def _mse(st: TensorStats, num_bits: int = 8) -> tuple[float, float]:
    h = st.histogram
    counts = abs_histogram(h).astype(np.float64)
    w = h.width
    centers = (np.arange(counts.size) + 0.5) * w
    # Tail sums over bins >= k, for thresholds t = k * w, k = 1..n.
    s0 = np.cumsum(counts[::-1])[::-1]
    s1 = np.cumsum((counts * centers)[::-1])[::-1]
    s2 = np.cumsum((counts * centers * centers)[::-1])[::-1]
    k = np.arange(1, counts.size + 1)
    t = k * w
    tail = lambda s: np.append(s, 0.0)[k]  # noqa: E731 - sums over bins >= k
    clip_err = tail(s2) - 2.0 * t * tail(s1) + t * t * tail(s0)
    lo = np.maximum(st.minmax.min, -t)
    hi = np.minimum(st.minmax.max, t)
    step = (hi - lo) / float(2**num_bits - 1)
    round_err = (s0[0] - tail(s0)) * step * step / 12.0
    best = int(np.argmin(clip_err + round_err))
    return _clip(st, float(t[best]))


METHODS: dict[str, Method] = {
    "naive": Method("naive", False, {}, _naive),
    "minmax": Method(
        "minmax", False, {"moving_average": False, "averaging_constant": 0.01}, _minmax
    ),
    "minmax_avg": Method("minmax_avg", False, {}, _minmax_avg),
    "percentile": Method("percentile", True, {"percentile": 99.999}, _percentile),
    "entropy": Method("entropy", True, {"num_quantized_bins": 128}, _entropy),
    "mse": Method("mse", True, {"num_bits": 8}, _mse),
}


def get_method(name: str) -> Method:
    """The calibrator called ``name`` (case-insensitive), or a one-line error."""
    key = str(name).lower()
    if key not in METHODS:
        raise CalibrationError(
            f"unknown calibration method '{name}' (choose from {', '.join(METHODS)})"
        )
    return METHODS[key]


def compute_ranges(
    stats: dict[str, TensorStats], method: str = "minmax", **options: object
) -> dict[str, tuple[float, float]]:
    """Ranges ``{tensor: (rmin, rmax)}`` (Python floats) from collected statistics."""
    m = get_method(method)
    unknown = set(options) - set(m.options)
    if unknown:
        raise CalibrationError(
            f"calibration method '{m.name}' has no option {', '.join(sorted(unknown))}"
        )
    out: dict[str, tuple[float, float]] = {}
    for name, st in stats.items():
        if st.minmax.count == 0:
            continue
        if m.needs_histogram and st.histogram is None:
            raise CalibrationError(f"tensor '{name}': method '{m.name}' needs a histogram")
        lo, hi = m.compute(st, **options)
        out[name] = (float(lo), float(hi))
    return out
