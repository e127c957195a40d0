"""calibrate(): ranges against statistics computed by hand on the model's activations."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from systolic_sdk.calibration import (
    ArrayReader,
    CalibrationDataReader,
    CalibrationError,
    calibratable_tensors,
    calibrate,
    collect,
    compute_ranges,
    merge_all,
)
from systolic_sdk.calibration.session import augment_model
from systolic_sdk.errors import SdkError


def activations(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every activation of every sample, run one sample at a time (the reference)."""
    names = calibratable_tensors(model)
    sess = ort.InferenceSession(
        augment_model(model, names).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    outs = [o.name for o in sess.get_outputs()]
    per: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(len(x)):
        res = dict(zip(outs, sess.run(outs, {"x": x[i : i + 1]}), strict=True))
        res["x"] = x[i : i + 1]
        for n in names:
            per[n].append(res[n])
    return {n: np.concatenate(v) for n, v in per.items()}


def test_tensors_are_every_node_input_and_output(model):
    assert calibratable_tensors(model) == ["x", "conv", "relu", "pool", "flat", "y"]


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_naive_minmax_and_minmax_avg_match_hand_statistics(model, samples, batch_size):
    acts = activations(model, samples)
    for method in ("naive", "minmax"):
        got = calibrate(model, ArrayReader({"x": samples}), method=method, batch_size=batch_size)
        assert list(got) == list(acts)
        for name, a in acts.items():
            assert got[name] == (float(a.min()), float(a.max()))
            assert type(got[name][0]) is float
    got = calibrate(model, ArrayReader({"x": samples}), method="minmax_avg", batch_size=batch_size)
    for name, a in acts.items():
        rows = a.reshape(len(samples), -1).astype(np.float64)
        assert got[name][0] == pytest.approx(rows.min(1).mean(), rel=1e-12)
        assert got[name][1] == pytest.approx(rows.max(1).mean(), rel=1e-12)


def test_moving_average_matches_sequential_formula(model, samples):
    acts = activations(model, samples)
    got = calibrate(
        model,
        ArrayReader({"x": samples}, batch_size=4),
        method="minmax",
        moving_average=True,
        averaging_constant=0.1,
    )
    for name, a in acts.items():
        rows = a.reshape(len(samples), -1)
        lo, hi = float(rows[0].min()), float(rows[0].max())
        for r in rows[1:]:
            lo += 0.1 * (float(r.min()) - lo)
            hi += 0.1 * (float(r.max()) - hi)
        assert got[name] == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)


def test_histogram_methods_stay_within_data_range(model, samples):
    acts = activations(model, samples)
    for method in ("percentile", "entropy", "mse"):
        got = calibrate(model, ArrayReader({"x": samples}), method=method)
        for name, a in acts.items():
            lo, hi = got[name]
            assert a.min() <= lo <= hi <= a.max()


def test_batched_collection_equals_sample_by_sample(model, samples):
    one = collect(model, ArrayReader({"x": samples}), histogram=True, batch_size=1)
    many = collect(model, ArrayReader({"x": samples}), histogram=True, batch_size=7)
    for name in one:
        a, b = one[name], many[name]
        assert (a.minmax.min, a.minmax.max, a.minmax.count) == (
            b.minmax.min,
            b.minmax.max,
            b.minmax.count,
        )
        assert a.minmax.sum_min == b.minmax.sum_min and a.minmax.sum_max == b.minmax.sum_max
        assert a.histogram.exponent == b.histogram.exponent
        assert np.array_equal(a.histogram.counts, b.histogram.counts)


def test_merge_of_two_runs_equals_one_run(model, samples):
    whole = collect(model, ArrayReader({"x": samples}), histogram=True)
    parts = [
        collect(model, ArrayReader({"x": samples[:7]}), histogram=True),
        collect(model, ArrayReader({"x": samples[7:]}), histogram=True),
    ]
    merged = merge_all(parts)
    for method in ("naive", "minmax_avg", "percentile", "entropy", "mse"):
        assert compute_ranges(merged, method) == compute_ranges(whole, method)


def test_requested_tensors_only(model, samples):
    got = calibrate(model, ArrayReader({"x": samples}), ["relu", "y"])
    assert list(got) == ["relu", "y"]


def test_unknown_tensor_and_initializer_are_refused(model, samples):
    with pytest.raises(CalibrationError, match="tensor 'nope' is not in the model"):
        calibrate(model, ArrayReader({"x": samples}), ["nope"])
    with pytest.raises(CalibrationError, match="tensor 'w' is an initializer"):
        calibrate(model, ArrayReader({"x": samples}), ["w"])


def test_unknown_method_and_option(model, samples):
    with pytest.raises(SdkError, match="unknown calibration method 'kl'"):
        calibrate(model, ArrayReader({"x": samples}), method="kl")
    with pytest.raises(SdkError, match="has no option percentile"):
        calibrate(model, ArrayReader({"x": samples}), method="minmax", percentile=99.0)


class _Listy(CalibrationDataReader):
    def __init__(self, feeds):
        self.feeds = list(feeds)

    def get_next(self):
        return self.feeds.pop(0) if self.feeds else None


def test_user_reader_and_empty_reader(model, samples):
    got = calibrate(model, _Listy({"x": samples[i : i + 1]} for i in range(3)))
    assert got["x"] == (float(samples[:3].min()), float(samples[:3].max()))
    with pytest.raises(CalibrationError, match="returned no samples"):
        calibrate(model, _Listy([]))


def test_nan_is_refused_naming_sample_and_tensor(model, samples):
    bad = samples.copy()
    bad[5, 0, 2, 2] = np.nan
    with pytest.raises(CalibrationError, match=r"sample 5: tensor 'x' has NaN or Inf"):
        calibrate(model, ArrayReader({"x": bad}), batch_size=4)


def test_inf_activation_is_named(samples):
    model = _overflow_model()
    x = np.ones((4, 2), dtype=np.float32)
    x[2, 1] = 1e30
    with pytest.raises(CalibrationError, match=r"sample 2: tensor 'sq' has NaN or Inf"):
        calibrate(model, ArrayReader({"x": x}), batch_size=4)


def test_nan_samples_skipped_with_warning(model, samples):
    bad = samples.copy()
    bad[[3, 11]] = np.inf
    with pytest.warns(UserWarning, match="skipp"):
        got = calibrate(model, ArrayReader({"x": bad}), batch_size=5, skip_nonfinite=True)
    good = np.delete(samples, [3, 11], axis=0)
    assert got == calibrate(model, ArrayReader({"x": good}))


def _overflow_model() -> onnx.ModelProto:
    import onnx.helper as oh
    from onnx import TensorProto

    graph = oh.make_graph(
        [oh.make_node("Mul", ["x", "x"], ["sq"]), oh.make_node("Relu", ["sq"], ["y"])],
        "sq",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_feeds_of_different_sizes_are_not_concatenated():
    import onnx.helper as oh
    from onnx import TensorProto

    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "dyn",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L"])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    feeds = [{"x": np.full((1, n), float(n) - 3, np.float32)} for n in (2, 2, 5, 1)]
    got = calibrate(model, _Listy(feeds), method="minmax_avg", batch_size=8)
    assert got["x"] == pytest.approx((np.mean([-1, -1, 2, -2]), np.mean([-1, -1, 2, -2])))
    assert got["y"] == (0.5, 0.5)  # per-sample values 0, 0, 2, 0


def test_progress_bar_only_when_asked(model, samples, capsys):
    calibrate(model, ArrayReader({"x": samples}))
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    calibrate(model, ArrayReader({"x": samples}), progress=True)
    assert "calibrating" in capsys.readouterr().err


def _extremes(stats) -> tuple:
    """A tensor's min/max statistics, every field."""
    m = stats.minmax
    return (m.count, m.min, m.max, m.sum_min, m.sum_max)


def test_in_graph_reductions_equal_numpy_statistics(model, samples):
    """Min/max methods reduce inside onnxruntime; histogram runs reduce in numpy."""
    reduced = collect(model, ArrayReader({"x": samples}), batch_size=6)
    fetched = collect(model, ArrayReader({"x": samples}), histogram=True, batch_size=6)
    assert list(reduced) == list(fetched)
    for name in reduced:
        assert _extremes(reduced[name]) == _extremes(fetched[name])


def test_extremes_gathered_over_batches_equal_batch_by_batch(model, samples, monkeypatch):
    import importlib

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    whole = collect(model, ArrayReader({"x": samples}), batch_size=3)
    monkeypatch.setattr(collect_mod, "PENDING_SAMPLES", 4)  # flush every second batch
    flushed = collect(model, ArrayReader({"x": samples}), batch_size=3)
    assert list(flushed) == list(whole)
    for name, st in whole.items():
        assert _extremes(st) == _extremes(flushed[name])
        assert st.minmax.count == len(samples)


def _histograms(stats) -> dict:
    """Every field of every histogram (bins, layout, extremes) and min/max statistic."""
    return {
        name: (
            _extremes(st),
            st.histogram.exponent,
            st.histogram.offset,
            st.histogram.counts.tolist(),
            st.histogram.min,
            st.histogram.max,
        )
        for name, st in stats.items()
    }


def test_large_activations_reduce_in_graph_and_bin_in_the_worker(
    model, samples, monkeypatch, opened_sessions
):
    """Above THREADED_MIN_VALUES per sample, histogram runs take their extremes from
    onnxruntime and bin in the worker thread: the statistics are the same, field for field."""
    import importlib

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    small = collect(model, ArrayReader({"x": samples}), histogram=True, optimize_graph=False)
    assert opened_sessions[-1][0] == []  # NumPy's extremes
    monkeypatch.setattr(collect_mod, "THREADED_MIN_VALUES", 1)
    large = collect(model, ArrayReader({"x": samples}), histogram=True, optimize_graph=False)
    # Reduced in the graph: every observed tensor but the input (relu and flat follow
    # from conv and pool).
    assert opened_sessions[-1][0] == ["conv", "pool", "y"]
    assert _histograms(large) == _histograms(small)
    bad = samples.copy()
    bad[7, 0, 1, 1] = np.nan
    with pytest.raises(CalibrationError, match=r"sample 7: tensor 'x' has NaN or Inf"):
        collect(model, ArrayReader({"x": bad}), histogram=True, batch_size=4)
    with pytest.warns(UserWarning, match="skipp"):
        kept = collect(model, ArrayReader({"x": bad}), histogram=True, skip_nonfinite=True)
    assert kept["x"].minmax.count == len(samples) - 1
    x = np.ones((4, 2), dtype=np.float32)
    x[2, 1] = 1e30  # finite input, infinite activation: seen by the in-graph reductions
    with pytest.raises(CalibrationError, match=r"sample 2: tensor 'sq' has NaN or Inf"):
        collect(_overflow_model(), ArrayReader({"x": x}), histogram=True, batch_size=4)


def test_graph_optimizations_for_histograms_only_by_default(model, samples, opened_sessions):
    reader = ArrayReader({"x": samples})
    for method in ("naive", "minmax_avg", "percentile", "entropy", "mse"):
        calibrate(model, reader, method=method)
        reader.rewind()
    calibrate(model, reader, method="mse", optimize_graph=False)
    reader.rewind()
    calibrate(model, reader, method="naive", optimize_graph=True)
    optimized = [options["optimize"] for _, options in opened_sessions]
    assert optimized == [False, False, True, True, True, False, True]


def test_optimized_session_keeps_every_fetched_tensor(model, samples):
    """onnxruntime's optimizations never fuse away a fetched tensor; values agree with the
    unoptimized run to float rounding, and the min/max statistics stay within it."""
    plain = collect(model, ArrayReader({"x": samples}), histogram=True, optimize_graph=False)
    fast = collect(model, ArrayReader({"x": samples}), histogram=True, optimize_graph=True)
    assert list(fast) == list(plain)
    for name, st in plain.items():
        lo, hi = st.minmax.min, st.minmax.max
        tol = 1e-5 * max(abs(lo), abs(hi))
        assert fast[name].minmax.min == pytest.approx(lo, abs=tol)
        assert fast[name].minmax.max == pytest.approx(hi, abs=tol)


def test_multiply_adds_and_onnxruntime_threads(model, monkeypatch):
    import importlib

    from systolic_sdk.calibration.session import tensor_info

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    info = tensor_info(model)
    # Conv: 4 x 8 x 8 outputs of 1 x 3 x 3 each; MatMul: 3 outputs of 4 each.
    assert collect_mod._macs_per_sample(model, info) == 4 * 8 * 8 * 9 + 3 * 4
    monkeypatch.setattr(collect_mod, "_cores", lambda: 2)
    binned = 4 * 8 * 8  # few multiply-adds per value: the binning outweighs onnxruntime
    assert collect_mod._onnxruntime_threads(model, info, binned) == 1
    binned = 2316 // collect_mod.MACS_PER_BINNED_VALUE  # the arithmetic dominates
    assert collect_mod._onnxruntime_threads(model, info, binned) is None
    monkeypatch.setattr(collect_mod, "_cores", lambda: 1)
    assert collect_mod._onnxruntime_threads(model, info, 1) is None


def test_two_batches_at_once_only_on_the_cpu_and_within_the_memory_budget(model, monkeypatch):
    import importlib

    from systolic_sdk.calibration.session import tensor_info

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    info = tensor_info(model)
    names = calibratable_tensors(model)
    monkeypatch.setattr(collect_mod, "_cores", lambda: 2)
    monkeypatch.setattr(collect_mod, "_physical_cores", lambda: 2)
    runs = collect_mod._runs_in_flight
    assert runs(info, names, None, None) == 2
    assert runs(info, names, ["CPUExecutionProvider"], 4) == 2
    assert runs(info, names, [("CPUExecutionProvider", {"arena_extend_strategy": "x"})], 1) == 2
    assert runs(info, names, ["CUDAExecutionProvider", "CPUExecutionProvider"], None) == 1
    per_sample = collect_mod._sample_size(info, names)[1]
    most = collect_mod.IN_FLIGHT_MAX_BYTES // per_sample
    assert runs(info, names, None, most) == 2
    assert runs(info, names, None, most + 1) == 1  # each run holds its own activations
    unknown = {**info, "relu": (info["relu"][0], None)}
    assert runs(unknown, names, None, None) == 1
    monkeypatch.setattr(collect_mod, "_physical_cores", lambda: 1)  # 2 logical, 1 core
    assert runs(info, names, None, None) == 1
    # The session's pool is shared by the two runs, each also on its calling thread:
    # onnxruntime's default total, one thread per physical core.
    for physical, threads in ((2, 1), (3, 2), (8, 7)):
        monkeypatch.setattr(collect_mod, "_physical_cores", lambda p=physical: p)
        assert collect_mod._in_flight_threads(2) == threads
    monkeypatch.undo()
    assert 1 <= collect_mod._physical_cores() <= collect_mod._cores()


def test_a_model_onnxruntime_cannot_optimize_falls_back_to_the_plain_session(
    model, samples, monkeypatch
):
    import onnxruntime as ort

    from systolic_sdk.calibration import session as session_mod

    levels: list = []
    real_load = session_mod._load

    def load(model, so, providers):
        levels.append(so.graph_optimization_level)
        if so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL:
            raise CalibrationError("onnxruntime cannot load the model for calibration: boom")
        return real_load(model, so, providers)

    monkeypatch.setattr(session_mod, "_load", load)
    got = calibrate(model, ArrayReader({"x": samples}), method="percentile")
    monkeypatch.undo()
    plain = calibrate(model, ArrayReader({"x": samples}), method="percentile", optimize_graph=False)
    assert got == plain
    assert levels == [
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ]


@pytest.mark.parametrize("histogram", [False, True])
def test_batches_run_side_by_side_give_the_one_at_a_time_statistics(
    model, samples, histogram, opened_sessions, monkeypatch
):
    """When onnxruntime keeps every core (min/max runs; histogram runs whose arithmetic
    outweighs the binning), batches run two at a time on one thread each (on two cores)
    and are added in order: every statistic, the order-dependent moving average included,
    and the sample a NaN is reported in are those of one batch at a time on every core."""
    import importlib
    import threading

    collect_mod = importlib.import_module("systolic_sdk.calibration.collect")
    if histogram:  # binned in the worker, onnxruntime on every core
        monkeypatch.setattr(collect_mod, "THREADED_MIN_VALUES", 1)
        monkeypatch.setattr(collect_mod, "MACS_PER_BINNED_VALUE", 0)
    real_observe = collect_mod._observe_reduced
    threads: set[str] = set()

    def observe(*args):
        threads.add(threading.current_thread().name)
        return real_observe(*args)

    monkeypatch.setattr(collect_mod, "_observe_reduced", observe)
    got: dict[int, list] = {}
    for cores in (2, 1):
        monkeypatch.setattr(collect_mod, "_cores", lambda cores=cores: cores)
        monkeypatch.setattr(collect_mod, "_physical_cores", lambda cores=cores: cores)
        threads.clear()
        opened_sessions.clear()
        got[cores] = [
            collect(
                model,
                ArrayReader({"x": samples}, batch_size=3),
                histogram=histogram,
                averaging_constant=c,
                # Unoptimized, so onnxruntime's values do not hang on its thread count.
                optimize_graph=False,
            )
            for c in (None, 0.1)
        ]
        expect = (1, True) if cores == 2 else (None, False)
        assert [(o["threads"], o["concurrent"]) for _, o in opened_sessions] == [expect] * 2
        assert any(t.startswith("calib-run") for t in threads) == (cores == 2)
        bad = samples.copy()
        bad[7, 0, 1, 1] = np.nan
        with pytest.raises(CalibrationError, match=r"sample 7: tensor 'x' has NaN"):
            collect(model, ArrayReader({"x": bad}, batch_size=2), histogram=histogram)
    for side_by_side, one_at_a_time in zip(got[2], got[1], strict=True):
        assert list(side_by_side) == list(one_at_a_time)
        for name, st in side_by_side.items():
            assert st.minmax == one_at_a_time[name].minmax
        if histogram:
            assert _histograms(side_by_side) == _histograms(one_at_a_time)
