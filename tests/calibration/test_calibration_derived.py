"""Tensors that follow from another (Relu, Clip, Identity, Flatten): found on the graph, and
their statistics (extremes, histograms binned once per group) equal to direct ones."""

from __future__ import annotations

import math
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, numpy_helper

from systolic_sdk.calibration import ArrayReader, calibratable_tensors, collect
from systolic_sdk.calibration import stats as stats_mod
from systolic_sdk.calibration.session import (
    _compose,
    augment_model,
    derived_tensors,
    tensor_info,
)
from systolic_sdk.calibration.stats import HistogramStats, clip_value, update_clipped


def chain_model(opset: int = 17) -> onnx.ModelProto:
    """x -> Mul(3) -> Relu -> Clip(constant 0.5..2) -> Identity -> Flatten; Mul -> Clip(lo
    from a second graph input: not constant) ; Mul -> Clip(max only, from a Constant node)."""
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    lo = numpy_helper.from_array(np.array(0.5, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(2.0, np.float32), "hi")
    nodes = [
        oh.make_node("Mul", ["x", "three"], ["m"]),
        oh.make_node("Relu", ["m"], ["r"]),
        oh.make_node("Clip", ["r", "lo", "hi"], ["c"]),
        oh.make_node("Identity", ["c"], ["i"]),
        oh.make_node("Flatten", ["i"], ["f"], axis=1),
        oh.make_node("Clip", ["m", "t"], ["dyn"]),
        oh.make_node("Constant", [], ["cap"], value=numpy_helper.from_array(np.float32(1.5))),
        oh.make_node("Clip", ["m", "", "cap"], ["capped"]),
        oh.make_node("Flatten", ["m"], ["f2"], axis=2),
    ]
    graph = oh.make_graph(
        nodes,
        "chain",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3]),
            oh.make_tensor_value_info("t", TensorProto.FLOAT, []),
        ],
        [
            oh.make_tensor_value_info(n, TensorProto.FLOAT, None)
            for n in ("f", "dyn", "capped", "f2")
        ],
        [three, lo, hi],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def test_derived_tensors_of_a_chain():
    model = chain_model()
    names = calibratable_tensors(model)
    got = derived_tensors(model, names, tensor_info(model))
    assert got == {
        "r": ("m", (0.0, None)),
        "c": ("m", (0.5, 2.0)),
        "i": ("m", (0.5, 2.0)),
        "f": ("m", (0.5, 2.0)),
        "capped": ("m", (None, 1.5)),
    }  # not: dyn (bound from an input), f2 (Flatten axis 2 changes the batch axis)
    # A source that is not calibrated breaks the chain.
    part = derived_tensors(model, ["r", "f"], tensor_info(model))
    assert part == {}
    assert derived_tensors(model, ["c", "i"], tensor_info(model)) == {"i": ("c", (None, None))}


def test_clip_attributes_of_opset_6():
    graph = oh.make_graph(
        [
            oh.make_node("Clip", ["x"], ["a"], min=-1.0, max=1.0),
            oh.make_node("Clip", ["x"], ["b"], max=2.0),
        ],
        "old",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 6)])
    got = derived_tensors(model, ["x", "a", "b"], tensor_info(model))
    assert got == {"a": ("x", (-1.0, 1.0)), "b": ("x", (None, 2.0))}


bound = st.one_of(st.none(), st.floats(-4, 4, width=32))


@settings(max_examples=200, deadline=None)
@given(bound, bound, bound, bound, st.floats(-8, 8, width=32))
def test_composed_clips_are_one_clip(a, b, c, d, x):
    inner, outer = (a, b), (c, d)
    assert clip_value(clip_value(x, inner), outer) == clip_value(x, _compose(outer, inner))


def _reference(values: np.ndarray, bounds, bins: int, prior: np.ndarray | None) -> HistogramStats:
    h = HistogramStats(bins)
    if prior is not None:
        h.update(stats_mod.clip_values(prior, bounds))
    h.update(stats_mod.clip_values(values, bounds))
    return h


def _same(a: HistogramStats, b: HistogramStats) -> bool:
    return (a.exponent, a.offset, a.min, a.max) == (b.exponent, b.offset, b.min, b.max) and (
        np.array_equal(a.counts, b.counts)
    )


edge = st.sampled_from([0.0, -0.0, 1.0, -1.0, -0.5, 6.0, -1e-40, 1e-40, 3e4, -3e4])
value = st.one_of(st.floats(-1e3, 1e3, width=32), edge)


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 200), elements=value),
    st.one_of(st.none(), arrays(np.float32, st.integers(1, 50), elements=value)),
    st.lists(st.tuples(bound, bound), min_size=0, max_size=3),
    st.sampled_from([8, 64, 4096]),
    st.booleans(),
)
def test_grouped_update_equals_one_update_per_clipped_tensor(
    values, prior, clips, bins, small_share
):
    bounds = [(None, None), *clips]  # lo > hi too: onnx Clip then gives hi everywhere
    hists = [HistogramStats(bins) for _ in bounds]
    if prior is not None:
        for h, b in zip(hists, bounds, strict=True):
            h.update(stats_mod.clip_values(prior, b))
    saved = stats_mod.MAX_SHARED_BINS
    stats_mod.MAX_SHARED_BINS = 16 if small_share else saved  # force the one-by-one path
    try:
        update_clipped(hists, bounds, values)
    finally:
        stats_mod.MAX_SHARED_BINS = saved
    for h, b in zip(hists, bounds, strict=True):
        assert _same(h, _reference(values, b, bins, prior))


def test_grouped_update_by_hand():
    # x in [-1, 3]: at width 1/8 bins -8..24 (33 > 32), at 1/4 bins -4..12; relu(x) in
    # [0, 3]: width 1/1024 (bins 0..3072).
    x = np.array([-1.0, -0.01, 0.3, 2.9, 3.0], np.float32)
    src, relu = HistogramStats(32), HistogramStats(4096)
    update_clipped([src, relu], [(None, None), (0.0, None)], x)
    assert (src.exponent, src.offset, src.counts.size) == (-2, -4, 17)
    assert np.flatnonzero(src.counts).tolist() == [0, 3, 5, 15, 16]  # -4, -1, 1, 11, 12
    assert (relu.exponent, relu.offset, relu.total) == (-10, 0, 5)
    assert relu.counts[0] == 2 and relu.counts[math.floor(0.3 * 1024)] == 1


def activations(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = calibratable_tensors(model)
    sess = ort.InferenceSession(
        augment_model(model, names).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    outs = [o.name for o in sess.get_outputs()]
    return {**feed, **dict(zip(outs, sess.run(outs, feed), strict=True))}


@pytest.mark.parametrize("batch_size", [1, 4])
def test_collected_statistics_of_derived_tensors_equal_direct_ones(batch_size):
    model = chain_model()
    x = np.random.default_rng(3).standard_normal((9, 2, 3)).astype(np.float32)
    t = np.array(0.25, np.float32)  # a scalar input shared by every sample

    class Reader(ArrayReader):
        def get_next(self):
            feed = super().get_next()
            if feed is not None:
                feed["t"] = t
            return feed

    reader = Reader({"x": x}, batch_size=batch_size)
    for histogram in (False, True):
        got = collect(model, reader, histogram=histogram, batch_size=batch_size)
        reader.rewind()
        acts = activations(model, {"x": x, "t": t})
        for name in ("m", "r", "c", "i", "f", "capped", "dyn"):
            a = acts[name].reshape(9, -1)
            mm = got[name].minmax
            assert (mm.count, mm.min, mm.max) == (9, float(a.min()), float(a.max()))
            assert mm.mean_min == pytest.approx(a.min(1).astype(np.float64).mean(), rel=1e-12)
            if histogram:
                ref = HistogramStats()
                ref.update(a)
                assert _same(got[name].histogram, ref)


@pytest.mark.parametrize("threaded_min", [0, None])
@pytest.mark.parametrize("histogram", [True, False])
def test_reader_refilling_one_buffer(model, samples, threaded_min, histogram, monkeypatch):
    """Histograms are binned one batch behind (in a thread when batches are large: 0 forces
    it), and batches run two at a time while the next is read where onnxruntime keeps
    both cores (min/max; histograms binned in the thread, here told that the arithmetic
    dominates); inputs must not change under them."""
    collect_mod = sys.modules["systolic_sdk.calibration.collect"]
    monkeypatch.setattr(collect_mod, "_cores", lambda: 2)
    monkeypatch.setattr(collect_mod, "_physical_cores", lambda: 2)
    if threaded_min is not None:
        monkeypatch.setattr(collect_mod, "THREADED_MIN_VALUES", threaded_min)
        monkeypatch.setattr(collect_mod, "MACS_PER_BINNED_VALUE", 0)
    runs = []
    real_in_order = collect_mod._in_order
    monkeypatch.setattr(collect_mod, "_in_order", lambda *a: runs.append(a[2]) or real_in_order(*a))

    class Refill:
        def __init__(self) -> None:
            self.i, self.buf = 0, np.empty((1, *samples.shape[1:]), np.float32)

        def get_next(self):
            if self.i == len(samples):
                return None
            self.buf[0] = samples[self.i]  # the same array, refilled
            self.i += 1
            return {"x": self.buf}

    want = collect(model, ArrayReader({"x": samples}, batch_size=1), histogram=histogram)
    flat = samples.reshape(len(samples), -1)
    ref = HistogramStats()
    ref.update(samples)
    # One sample a batch, and for histograms also batches sized after the first one.
    for batch_size in (1, None) if histogram else (1,):
        runs.clear()
        got = collect(model, Refill(), histogram=histogram, batch_size=batch_size)
        assert (runs[0] > 1) == (not histogram or threaded_min is not None)
        for name in want:
            if histogram:
                assert _same(got[name].histogram, want[name].histogram)
            mm, ref_mm = got[name].minmax, want[name].minmax
            assert (mm.count, mm.min, mm.max) == (ref_mm.count, ref_mm.min, ref_mm.max)
        assert got["x"].minmax.mean_max == pytest.approx(flat.max(1).astype(np.float64).mean())
        if histogram:
            assert _same(got["x"].histogram, ref)
