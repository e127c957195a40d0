"""Mergeable statistics and calibrators, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from systolic_sdk.calibration.methods import abs_histogram, compute_ranges
from systolic_sdk.calibration.stats import HistogramStats, MinMaxStats, TensorStats


def test_minmax_by_hand():
    s = MinMaxStats()
    s.update(np.array([[1.0, -2.0, 3.0], [0.5, 0.25, 4.0]], np.float32), batch=2)
    assert (s.count, s.min, s.max) == (2, -2.0, 4.0)
    assert s.mean_min == (-2.0 + 0.25) / 2
    assert s.mean_max == (3.0 + 4.0) / 2


def test_minmax_tensor_not_following_batch_counts_for_every_sample():
    s = MinMaxStats()
    s.update(np.array([1.0, 5.0], np.float32), batch=3)  # first dim 2 != batch 3
    assert s.count == 3 and s.mean_max == 5.0


def test_mean_is_exact_whatever_the_order():
    values = np.array([1e16, 1.0, -1e16, 3.0], dtype=np.float64)
    a, b = MinMaxStats(), MinMaxStats()
    a.update_per_sample(values, values)
    b.update_per_sample(values[::-1], values[::-1])
    assert a.mean_min == b.mean_min == 1.0  # naive float summation gives 0.75 or 0.0


def test_moving_average_by_hand_and_merge_in_order():
    s = MinMaxStats(averaging_constant=0.5)
    s.update_per_sample(np.array([4.0, 0.0, 2.0]), np.array([4.0, 8.0, 0.0]))
    assert s.moving_min == 2.0  # 4 -> 2 -> 2
    assert s.moving_max == 3.0  # 4 -> 6 -> 3
    first, second = MinMaxStats(averaging_constant=0.5), MinMaxStats(averaging_constant=0.5)
    first.update_per_sample(np.array([4.0]), np.array([4.0]))
    second.update_per_sample(np.array([0.0, 2.0]), np.array([8.0, 0.0]))
    merged = first.merge(second)
    assert (merged.moving_min, merged.moving_max) == (2.0, 3.0)


def test_histogram_by_hand():
    h = HistogramStats(num_bins=8)
    h.update(np.array([0.0, 0.5, 1.5, -0.25, 3.0], np.float32))
    # [-0.25, 3] at width 0.25 needs bins -1..12 (14 > 8); at 0.5, bins -1..6 (8)
    assert h.width == 0.5 and h.offset == -1
    assert h.counts.tolist() == [1, 1, 1, 0, 1, 0, 0, 1]
    assert h.total == 5
    # |x|: 0.25 and 0.0 in [0, 0.5), 0.5 in [0.5, 1), 1.5, 3.0
    assert abs_histogram(h).tolist() == [2, 1, 0, 1, 0, 0, 1]


def test_histogram_widens_by_merging_whole_bins():
    h = HistogramStats(num_bins=8)
    h.update(np.array([0.1, 0.9], np.float32))
    assert h.width == 0.125
    h.update(np.array([7.0], np.float32))
    assert h.width == 1.0 and h.counts.tolist() == [2, 0, 0, 0, 0, 0, 0, 1]


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 300), elements=finite),
    st.integers(1, 299),
    st.sampled_from([8, 64, 4096]),
)
def test_histogram_merge_of_two_halves_equals_the_whole(values, cut, bins):
    cut = min(cut, values.size)
    whole = HistogramStats(bins)
    whole.update(values)
    a, b = HistogramStats(bins), HistogramStats(bins)
    a.update(values[:cut])
    b.update(values[cut:])
    for merged in (a.merge(b), b.merge(a)):
        assert (merged.exponent, merged.offset) == (whole.exponent, whole.offset)
        assert np.array_equal(merged.counts, whole.counts)
    streamed = HistogramStats(bins)
    for chunk in np.array_split(values, 5):
        streamed.update(chunk)
    assert np.array_equal(streamed.counts, whole.counts)
    edges = whole.edges()
    ref, _ = np.histogram(values.astype(np.float64), bins=edges)
    ref[-1] -= np.count_nonzero(values.astype(np.float64) == edges[-1])  # numpy closes the last
    assert np.array_equal(whole.counts, ref)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(2, 200), elements=finite), st.data())
def test_minmax_merge_equals_whole(values, data):
    cut = data.draw(st.integers(1, values.size - 1))
    whole, a, b = MinMaxStats(0.25), MinMaxStats(0.25), MinMaxStats(0.25)
    whole.update_per_sample(values, values)
    a.update_per_sample(values[:cut], values[:cut])
    b.update_per_sample(values[cut:], values[cut:])
    m = a.merge(b)
    assert (m.count, m.min, m.max, m.sum_min, m.sum_max) == (
        whole.count,
        whole.min,
        whole.max,
        whole.sum_min,
        whole.sum_max,
    )
    assert m.mean_min == float(np.mean(values.astype(np.longdouble))) or math.isclose(
        m.mean_min, float(np.mean(values.astype(np.float64))), rel_tol=1e-12, abs_tol=1e-300
    )
    assert math.isclose(m.moving_min, whole.moving_min, rel_tol=1e-9, abs_tol=1e-6)


def _stats(values: np.ndarray, bins: int = 4096) -> dict[str, TensorStats]:
    st_ = TensorStats(MinMaxStats(), HistogramStats(bins))
    st_.minmax.update(values)
    st_.histogram.update(values)
    return {"t": st_}


def test_percentile_by_hand():
    values = np.arange(1, 1001, dtype=np.float32)  # |x| = 1..1000
    lo, hi = compute_ranges(_stats(values), "percentile", percentile=99.0)["t"]
    # the 99th percentile of 1..1000 is 990; reported as the upper edge of its bin
    h = _stats(values)["t"].histogram
    assert lo == 1.0 and 990.0 <= hi <= 990.0 + h.width
    assert compute_ranges(_stats(values), "percentile", percentile=100.0)["t"][1] == 1000.0


def test_percentile_clips_both_signs_symmetrically():
    values = np.concatenate([np.linspace(-1, 1, 10000), [-50.0, 40.0]]).astype(np.float32)
    lo, hi = compute_ranges(_stats(values), "percentile", percentile=99.9)["t"]
    assert -1.1 < lo < -0.99 and 0.99 < hi < 1.1 and lo == -hi


def test_entropy_ignores_rare_outliers_and_keeps_a_uniform_range():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(-1, 1, 100000).astype(np.float32)
    lo, hi = compute_ranges(_stats(uniform), "entropy")["t"]
    assert hi > 0.95 and lo < -0.95  # nothing to gain from clipping a uniform distribution
    gauss = np.concatenate([rng.standard_normal(100000), [60.0]]).astype(np.float32)
    lo, hi = compute_ranges(_stats(gauss), "entropy")["t"]
    assert 2.0 < hi < 20.0 and lo == -hi


def test_mse_by_brute_force():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(20000), [30.0]]).astype(np.float32)
    stats = _stats(values, bins=512)
    lo, hi = compute_ranges(stats, "mse")["t"]

    def mse(t: float) -> float:
        a, b = max(values.min(), -t), min(values.max(), t)
        step = (b - a) / 255
        q = np.round((np.clip(values, a, b) - a) / step) * step + a
        return float(np.mean((q - values) ** 2))

    best = min(np.linspace(0.5, 30, 300), key=mse)
    assert mse(hi) <= 1.05 * mse(best)
    # a lone outlier costs more clipped than the coarser step costs everyone else
    assert hi > 25
    values = rng.laplace(size=50000).astype(np.float32)
    stats = _stats(values, bins=512)
    lo, hi = compute_ranges(stats, "mse")["t"]
    best = min(np.linspace(0.5, float(values.max()), 300), key=mse)
    assert mse(hi) <= 1.05 * mse(best)
    assert hi < values.max()  # heavy tails: clipping pays


def test_naive_and_minmax_avg_via_compute_ranges():
    s = TensorStats(MinMaxStats())
    s.minmax.update_per_sample(np.array([-1.0, -3.0]), np.array([2.0, 4.0]))
    assert compute_ranges({"t": s}, "naive") == {"t": (-3.0, 4.0)}
    assert compute_ranges({"t": s}, "minmax_avg") == {"t": (-2.0, 3.0)}
    with pytest.raises(Exception, match="needs a histogram"):
        compute_ranges({"t": s}, "entropy")


def test_statistics_pickle_and_merge_across_processes():
    import pickle

    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(500).astype(np.float32), rng.standard_normal(700).astype(np.float32)
    parts = [_stats(a), _stats(b)]
    shipped = [pickle.loads(pickle.dumps(p)) for p in parts]  # as from worker processes
    from systolic_sdk.calibration import merge_all

    merged = merge_all(shipped)
    whole = _stats(np.concatenate([a, b]))  # one sample: per-sample averages differ
    for method in ("naive", "percentile", "entropy", "mse"):
        assert compute_ranges(merged, method) == compute_ranges(whole, method)
    assert merged["t"].minmax.mean_max == (float(a.max()) + float(b.max())) / 2


@pytest.mark.parametrize("exponent", [-6, 3])
def test_binning_in_steps_equals_numpy(monkeypatch, exponent):
    from systolic_sdk.calibration import stats as stats_mod

    rng = np.random.default_rng(5)
    values = (rng.standard_normal(1000) * 2.0 ** (exponent + 2)).astype(np.float32)
    values[:3] = [-1.4e-45, 0.0, -(2.0**exponent)]  # an underflow, zero, an edge
    first = math.floor(math.ldexp(float(values.min()), -exponent))
    size = math.floor(math.ldexp(float(values.max()), -exponent)) - first + 1
    ref = np.bincount(np.floor(values.astype(np.float64) / 2.0**exponent).astype(int) - first)
    monkeypatch.setattr(stats_mod, "BIN_CHUNK", 1)  # steps of 4 * size values
    got = stats_mod.bin_counts(values, exponent, first, size)
    assert np.array_equal(got, ref) and got.sum() == values.size


def _kl_one_by_one(counts: np.ndarray, i: int, nq: int) -> float:
    """The divergence of one candidate threshold, written out plainly (the reference)."""
    from systolic_sdk.calibration.methods import _smooth

    sliced = counts[:i]
    p = sliced.copy()
    p[-1] += counts[i:].sum()
    group = np.minimum(np.arange(i) // (i // nq), nq - 1)
    nonzero = sliced != 0
    q_sum = np.bincount(group, weights=sliced, minlength=nq)
    q_cnt = np.bincount(group, weights=nonzero, minlength=nq)
    q = np.where(nonzero, q_sum[group] / np.maximum(q_cnt[group], 1.0), 0.0)
    if p.sum() == 0 or q.sum() == 0:
        return math.nan
    p, q = _smooth(p / p.sum()), _smooth(q / q.sum())
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int64, st.integers(9, 300), elements=st.integers(0, 10**6)),
    st.sampled_from([4, 8, 128]),
    st.data(),
)
def test_kl_closed_form_equals_one_by_one(counts, nq, data):
    from systolic_sdk.calibration.methods import kl_divergences

    counts = counts.astype(np.float64)
    zeros = data.draw(st.lists(st.integers(0, counts.size - 1), max_size=counts.size))
    counts[zeros] = 0.0  # empty bins, empty tails, all empty
    nq = min(nq, counts.size - 1)
    candidates = np.arange(nq, counts.size + 1, 3)
    got = kl_divergences(counts, nq, candidates)
    want = np.array([_kl_one_by_one(counts, int(i), nq) for i in candidates])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.allclose(got[ok], want[ok], rtol=1e-9, atol=1e-12)
    if ok.any():  # the same threshold wins unless two candidates are within rounding
        best, pick = np.nanmin(want), int(np.nanargmin(got))
        assert want[pick] <= best + 1e-9 * max(1.0, abs(best))


def test_kl_closed_form_by_hand():
    from systolic_sdk.calibration.methods import kl_divergences

    # a tail-only last bin (Q empty there) and empty bins inside the range
    counts = np.array([5.0, 0.0, 3.0, 0.0, 0.0, 7.0, 1.0, 0.0, 2.0])
    for i in range(2, 10):
        got = kl_divergences(counts, 2, np.array([i]))[0]
        assert got == pytest.approx(_kl_one_by_one(counts, i, 2), rel=1e-12, abs=1e-15)
