"""Run the fp32 model on calibration samples and collect per-tensor statistics.

Samples are streamed: each batch is reduced into the fixed-size statistics of
:mod:`systolic_sdk.calibration.stats` and dropped, so memory does not grow with the
number of samples. For the min/max calibrators the model is augmented with per-sample
ReduceMin/ReduceMax/ReduceSum nodes, so the activations never leave onnxruntime (the
sum detects NaN/Inf, which onnxruntime's ReduceMin/ReduceMax skip; a batch with one is
looked at again tensor by tensor, to name the sample and tensor). The histogram
calibrators fetch the activations themselves as extra graph outputs and bin them in a
worker thread, one batch behind, while onnxruntime computes the next batch; onnxruntime's
idle threads then sleep instead of spinning, so that the binning gets the cores between
operators (the min/max sessions keep onnxruntime's default, as its own calibrators).
Histogram runs use onnxruntime's graph optimizations (``optimize_graph``); where a
sample's activations are large enough for the worker thread, their extremes come from
in-graph reductions too, and onnxruntime gets one core fewer when the binning outweighs
the model's arithmetic (:func:`_onnxruntime_threads`). Where onnxruntime keeps every
core and its per-sample reductions are in the graph, two batches run at once on a CPU,
sharing its cores, and are added in order (:func:`_runs_in_flight`,
:func:`_in_order`).

Outputs of Relu, Clip (constant bounds), Identity and Flatten(axis=1) whose input is
calibrated too are neither reduced nor fetched: their extremes are their source's,
clipped, and their histograms are counted from the source's values in the same pass
(:func:`~systolic_sdk.calibration.stats.update_clipped`); the statistics are the same
as if they had been observed. When every model input has a dynamic first dimension,
samples are grouped into batches sized so one batch's activations take about
``BATCH_BUDGET_BYTES``.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import onnx

from systolic_sdk.calibration.methods import CalibrationError, compute_ranges, get_method
from systolic_sdk.calibration.reader import CalibrationDataReader
from systolic_sdk.calibration.session import (
    REDUCED,
    Bounds,
    calibratable_tensors,
    check_names,
    derived_tensors,
    open_session,
    reduced_name,
    required_inputs,
    tensor_info,
)
from systolic_sdk.calibration.stats import (
    DEFAULT_NUM_BINS,
    HistogramStats,
    MinMaxStats,
    TensorStats,
    clip_values,
    per_sample_view,
    update_clipped,
)

BATCH_BUDGET_BYTES = 8 << 20
MAX_AUTO_BATCH = 32
# Batches run this many at once where onnxruntime keeps every core (each run on its share).
RUNS_IN_FLIGHT = 2
# ... provided one batch's activations (by inferred shapes) take at most this much: each
# run holds its own.
IN_FLIGHT_MAX_BYTES = 256 << 20
# Per-sample extremes are gathered over this many samples before they are added (fewer,
# larger updates; min, max, count and the exact sums do not depend on the grouping).
PENDING_SAMPLES = 256

COLLECT_OPTIONS = (
    "batch_size",
    "progress",
    "skip_nonfinite",
    "num_bins",
    "providers",
    "optimize_graph",
)


def _batchable(model: onnx.ModelProto) -> bool:
    """True when every required input has a dynamic first dimension."""
    inputs = required_inputs(model)
    if not inputs:
        return False
    for vi in inputs:
        shape = vi.type.tensor_type.shape if vi.type.HasField("tensor_type") else None
        if shape is None or not shape.dim:
            return False
        if shape.dim[0].HasField("dim_value"):
            return False
    return True


def _num_samples(feed: dict[str, np.ndarray]) -> int:
    first = next(iter(feed.values()))
    return int(first.shape[0]) if np.ndim(first) >= 1 else 1


class _Batcher:
    """Regroups a reader's feeds into batches of about ``target`` samples.

    ``target`` may change between batches (the collector sizes batches after the first).
    Each item is ``(feed, number of reader feeds used)``.
    """

    def __init__(self, reader: CalibrationDataReader, target: int, batchable: bool) -> None:
        self.reader = reader
        self.target = target
        self.batchable = batchable

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        pending: list[dict[str, np.ndarray]] = []
        rows = 0

        def flush() -> tuple[dict[str, np.ndarray], int]:
            nonlocal pending, rows
            if len(pending) == 1:
                batch = pending[0]
            else:
                batch = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            out = (batch, len(pending))
            pending, rows = [], 0
            return out

        while True:
            feed = self.reader.get_next()
            if feed is None:
                if pending:
                    yield flush()
                return
            feed = dict(feed)
            if pending and _signature(feed) != _signature(pending[0]):
                yield flush()  # samples of another shape: not concatenable
            pending.append(feed)
            rows += _num_samples(feed)
            if not self.batchable or rows >= self.target:
                yield flush()
            else:  # held across get_next: a reader may refill the same buffers
                pending[-1] = {k: np.array(v) for k, v in feed.items()}


def _signature(feed: dict[str, np.ndarray]) -> tuple:
    return tuple((k, np.shape(v)[1:], np.asarray(v).dtype) for k, v in feed.items())


class _Progress:
    """click progress bar on stderr, only when asked or when stderr is a terminal."""

    def __init__(self, reader: CalibrationDataReader, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar = None
        if enabled:
            import click

            try:
                length = len(reader)
            except (TypeError, NotImplementedError):
                length = None
            self._bar = click.progressbar(
                length=length, label="calibrating", file=sys.stderr, show_eta=True
            )
            self._bar.__enter__()

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def _extremes(values: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-sample minima and maxima (NaN propagates), or None for non-float/empty."""
    if values.dtype.kind != "f" or values.size == 0:
        return None
    rows = per_sample_view(values, batch)
    mins, maxs = rows.min(axis=1), rows.max(axis=1)
    if rows.shape[0] != batch:
        mins, maxs = np.repeat(mins, batch), np.repeat(maxs, batch)
    return mins, maxs


def _bad_rows(ext: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """Samples whose extremes are NaN or infinite; None if none."""
    ok = np.isfinite(ext[0]) & np.isfinite(ext[1])
    return None if ok.all() else np.flatnonzero(~ok)


def collect(
    model: onnx.ModelProto,
    reader: CalibrationDataReader,
    tensor_names: Sequence[str] | None = None,
    *,
    histogram: bool = False,
    num_bins: int = DEFAULT_NUM_BINS,
    averaging_constant: float | None = None,
    batch_size: int | None = None,
    progress: bool | None = None,
    skip_nonfinite: bool = False,
    providers: Sequence[str] | None = None,
    optimize_graph: bool | None = None,
) -> dict[str, TensorStats]:
    """Stream ``reader``'s samples through ``model`` and return statistics per tensor.

    ``batch_size`` None picks a batch from the first sample's activation size when the
    model's batch dimension is dynamic. Samples with NaN/Inf in an input or activation
    raise :class:`CalibrationError` naming the sample and tensor, or are skipped with a
    warning under ``skip_nonfinite``. ``optimize_graph`` runs the model with onnxruntime's
    graph optimizations (:func:`~.session.open_session`); None: for the histogram
    calibrators only, whose ranges do not hinge on the last bit of single values (the
    min/max calibrators then stay bit for bit onnxruntime's MinMax). A reader may carry
    a ``collect_options`` dict (``batch_size``, ``progress``, ``skip_nonfinite``,
    ``optimize_graph``) used where no argument is given.
    """
    defaults = getattr(reader, "collect_options", None) or {}
    if batch_size is None:
        batch_size = defaults.get("batch_size")
    if progress is None:
        progress = defaults.get("progress")
    skip_nonfinite = bool(skip_nonfinite or defaults.get("skip_nonfinite", False))
    if optimize_graph is None:
        optimize_graph = defaults.get("optimize_graph")
    if batch_size is not None and int(batch_size) < 1:
        raise CalibrationError(f"batch_size must be >= 1, got {batch_size}")
    info = tensor_info(model)
    everything = calibratable_tensors(model, {k: v[0] for k, v in info.items()})
    names = list(everything if tensor_names is None else tensor_names)
    if tensor_names is not None:
        check_names(model, names)
    inputs = {i.name for i in model.graph.input}
    # Outputs of Relu/Clip/Flatten of a calibrated tensor follow from it: they are neither
    # reduced nor fetched (their extremes are the source's clipped, their histograms come
    # from the source's values).
    derived = derived_tensors(model, names, info)
    observed = [n for n in names if n not in derived]
    # Per-sample extremes (and the NaN/Inf check) of tensors of known rank come from
    # onnxruntime, reduced in the graph while each tensor is fresh in the cache. Without
    # histograms that is all there is to it, and those activations never leave onnxruntime.
    # The histogram calibrators fetch every observed tensor; when a sample's activations
    # are large enough to be binned in the worker thread, their extremes are reduced in
    # the graph too (for small ones the extra nodes cost more than NumPy's min and max).
    reducible = [n for n in names if n not in inputs and _reducible(info, n)]
    size = _sample_size(info, observed) if histogram else None
    binned = size[0] if size else 0
    threaded = binned >= THREADED_MIN_VALUES
    if histogram and not threaded:
        reducible = []
    reduce = [n for n in reducible if n not in derived]
    raw = observed if histogram else [n for n in observed if n not in reduce]
    threads = _onnxruntime_threads(model, info, binned) if threaded else None
    in_flight = 1
    if reduce and threads is None:
        in_flight = _runs_in_flight(info, everything, providers, batch_size)
    session_options = {
        "sleep_idle_threads": histogram,
        "optimize": histogram if optimize_graph is None else bool(optimize_graph),
        "threads": _in_flight_threads(in_flight) if in_flight > 1 else threads,
        "concurrent": in_flight > 1,
    }
    sess = open_session(model, raw, providers, reduce, **session_options)
    # A session that fetches every observed tensor, for NaN/Inf follow-ups.
    full_sess = sess if histogram or not reduce else None
    wanted = set(raw)
    fetch = [o.name for o in sess.get_outputs() if o.name in wanted]
    fetch_reduced = [reduced_name(k, n) for k in REDUCED for n in reduce]
    order = {name: i for i, name in enumerate(everything)}
    children: dict[str, list[str]] = {}
    for name, (src, _) in derived.items():
        children.setdefault(src, []).append(name)

    def new_stats() -> TensorStats:
        hist = HistogramStats(num_bins) if histogram else None
        return TensorStats(MinMaxStats(averaging_constant), hist)

    stats: dict[str, TensorStats] = {}
    dropped: set[str] = set()
    sample_base = 0
    skipped = 0
    bar = _Progress(reader, progress)
    batchable = _batchable(model)
    first_target = batch_size or (
        _reduced_batch(info, reducible) if reducible and batchable and not histogram else 1
    )
    batcher = _Batcher(reader, first_target, batchable)
    binner = _Binner(histogram)
    pending: dict[str, tuple[list[float], list[float]]] = {}  # per-sample extremes
    pending_samples = 0

    def run_reduced(feed: dict[str, np.ndarray], n: int, base: int) -> Observed | None:
        return _observe_reduced(sess, fetch, fetch_reduced, reduce, feed, n, base)

    try:
        for feed, used, n, run in _in_order(batcher, run_reduced if reduce else None, in_flight):
            if run is None:  # plain run, or NaN/Inf seen: look at every tensor itself
                if full_sess is None:
                    full_sess = open_session(model, names, providers, **session_options)
                full_fetch = [o.name for o in full_sess.get_outputs() if o.name in set(names)]
                run = _observe(full_sess, full_fetch, feed, n, sample_base, skip_nonfinite, order)
            if run is None:  # every sample of the batch skipped
                skipped += n
            else:
                values, extremes, kept = run
                skipped += n - kept
                _add_derived(extremes, derived)
                for name in names:
                    if name in dropped or (name not in values and name not in extremes):
                        continue
                    ext = extremes.get(name)
                    if ext is None:
                        if name in values and values[name].dtype.kind != "f":
                            dropped.add(name)
                        continue
                    st = stats.get(name)
                    if st is None:
                        st = stats[name] = new_stats()
                    if averaging_constant is None:  # exact in any grouping: gather samples
                        lows, highs = pending.setdefault(name, ([], []))
                        lows.extend(ext[0].tolist())  # Python floats: no array per batch kept
                        highs.extend(ext[1].tolist())
                    else:  # the moving average is kept per batch, as it always was
                        st.minmax.update_per_sample(*ext)
                pending_samples += kept
                if pending_samples >= PENDING_SAMPLES:
                    _flush_minmax(stats, pending)
                    pending_samples = 0
                if histogram:
                    binner.submit(_histogram_jobs(stats, values, extremes, derived, children, feed))
                if (
                    batch_size is None
                    and batchable
                    and sample_base == 0
                    and (histogram or not reduce)
                ):
                    per_sample = sum(values[k].nbytes for k in fetch)
                    per_sample += sum(values[src].nbytes for src, _ in derived.values())
                    per_sample /= max(kept, 1)
                    batcher.target = int(
                        min(MAX_AUTO_BATCH, max(1, BATCH_BUDGET_BYTES // max(per_sample, 1)))
                    )
            sample_base += n
            bar.update(used)
        _flush_minmax(stats, pending)
        binner.wait()
    finally:
        binner.close()
        bar.close()
    if skipped:
        warnings.warn(f"calibration skipped {skipped} sample(s) with NaN/Inf", stacklevel=2)
    if not stats and sample_base == 0:
        raise CalibrationError("the calibration data reader returned no samples")
    if not stats:
        raise CalibrationError("no calibration sample was usable (all had NaN/Inf)")
    missing = [n for n in names if n not in stats and n not in dropped]
    if tensor_names is not None and missing:
        raise CalibrationError(f"tensor '{missing[0]}' produced no values during calibration")
    return {n: stats[n] for n in names if n in stats}


def _in_order(
    batches: Iterable[tuple[dict[str, np.ndarray], int]],
    run: Callable[[dict[str, np.ndarray], int, int], Observed | None] | None,
    in_flight: int,
) -> Iterator[tuple[dict[str, np.ndarray], int, int, Observed | None]]:
    """``(feed, reader feeds used, samples, run(feed, samples, first sample's index))`` per
    batch, in order; with ``in_flight`` > 1 that many batches run at once in worker
    threads while the next ones are read (their inputs copied: a reader may refill its
    buffers meanwhile), from the second batch on: the caller may size later batches from
    the first one's activations. ``run`` None yields None for each batch."""
    base = 0
    if run is None or in_flight <= 1:
        for feed, used in batches:
            n = _num_samples(feed)
            yield feed, used, n, None if run is None else run(feed, n, base)
            base += n
        return
    queue: deque[tuple[dict[str, np.ndarray], int, int, Future]] = deque()
    started = False
    with ThreadPoolExecutor(in_flight, "calib-run") as pool:
        try:
            for feed, used in batches:
                n = _num_samples(feed)
                feed = {k: np.array(v) for k, v in feed.items()}
                queue.append((feed, used, n, pool.submit(run, feed, n, base)))
                base += n
                if len(queue) >= (in_flight if started else 1):
                    started = True
                    feed0, used0, n0, done = queue.popleft()
                    yield feed0, used0, n0, done.result()
            while queue:
                feed0, used0, n0, done = queue.popleft()
                yield feed0, used0, n0, done.result()
        finally:
            for *_, pending in queue:
                pending.cancel()


def _flush_minmax(
    stats: dict[str, TensorStats], pending: dict[str, tuple[list[float], list[float]]]
) -> None:
    """Add gathered per-sample extremes to the min/max statistics, one call per tensor."""
    for name, (lows, highs) in pending.items():
        stats[name].minmax.update_per_sample(np.array(lows), np.array(highs))
    pending.clear()


def _add_derived(
    extremes: dict[str, tuple[np.ndarray, np.ndarray]], derived: dict[str, tuple[str, Bounds]]
) -> None:
    """Per-sample extremes of the derived tensors: their source's, clipped."""
    for name, (src, bounds) in derived.items():
        if name not in extremes and src in extremes:
            mins, maxs = extremes[src]
            extremes[name] = (clip_values(mins, bounds), clip_values(maxs, bounds))


HistogramJob = tuple[list[HistogramStats], list[Bounds], np.ndarray, float, float]


def _histogram_jobs(
    stats: dict[str, TensorStats],
    values: dict[str, np.ndarray],
    extremes: dict[str, tuple[np.ndarray, np.ndarray]],
    derived: dict[str, tuple[str, Bounds]],
    children: dict[str, list[str]],
    feed: dict[str, np.ndarray],
) -> list[HistogramJob]:
    """One batch's histogram updates: a tensor and those derived from it go together.
    Inputs are copied (a reader may refill its buffers while the update waits)."""
    jobs = []
    for name in stats:
        if name in derived or name not in values or name not in extremes:
            continue
        group = [name] + [c for c in children.get(name, ()) if c in stats]
        hists = [stats[g].histogram for g in group]
        bounds: list[Bounds] = [(None, None)] + [derived[c][1] for c in group[1:]]
        mins, maxs = extremes[name]
        data = values[name].copy() if name in feed else values[name]
        jobs.append((hists, bounds, data, float(mins.min()), float(maxs.max())))
    return jobs


def _run_jobs(jobs: list[HistogramJob]) -> None:
    for job in jobs:
        update_clipped(*job)


# Batches with fewer values than this are binned in the calling thread.
THREADED_MIN_VALUES = 1 << 20


class _Binner:
    """Runs histogram updates one batch behind, in a worker thread, while onnxruntime
    computes the next batch (both release the GIL for most of their work). Updates keep
    their order; the activations of one batch are held until they are binned."""

    def __init__(self, enabled: bool) -> None:
        self._pool = ThreadPoolExecutor(1, "calib-bin") if enabled else None
        self._pending: Future | None = None

    def submit(self, jobs: list[HistogramJob]) -> None:
        self.wait()
        if self._pool is None or sum(job[2].size for job in jobs) < THREADED_MIN_VALUES:
            _run_jobs(jobs)  # a small batch: the hand-over would cost more than it saves
        else:
            self._pending = self._pool.submit(_run_jobs, jobs)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.cache
def _physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux), else :func:`_cores`:
    onnxruntime's default intra-op thread count (read once: one sysfs file pair per CPU)."""
    try:
        cores = set()
        for cpu in os.sched_getaffinity(0):
            topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
            with open(topology + "physical_package_id") as pkg, open(topology + "core_id") as core:
                cores.add((pkg.read().strip(), core.read().strip()))
    except (AttributeError, OSError):
        return _cores()
    return min(len(cores), _cores()) or _cores()


def _in_flight_threads(in_flight: int) -> int:
    """Intra-op threads of a session that runs ``in_flight`` batches at once: its pool is
    shared by the runs, each of which also computes on its calling thread, so that the
    total is onnxruntime's default (one thread per physical core)."""
    return max(1, _physical_cores() - in_flight + 1)


# Below this many multiply-adds of the model per value binned, binning takes longer than
# onnxruntime's single-threaded inference (about 2 ns per value binned against 20-40 ps
# per multiply-add, measured on ResNet-18 and EfficientNet-Lite0; see bench/README.md).
MACS_PER_BINNED_VALUE = 100


def _onnxruntime_threads(
    model: onnx.ModelProto, info: dict[str, tuple[int, tuple | None]], binned: int
) -> int | None:
    """onnxruntime's intra-op threads for a histogram run whose ``binned`` values per
    sample are binned in the worker thread, or None for its default (one per core).

    The worker bins a sample's activations (one core) while onnxruntime computes the next
    sample. When the binning is the longer of the two (fewer than
    ``MACS_PER_BINNED_VALUE`` multiply-adds per value binned, as in EfficientNet-Lite0),
    onnxruntime gets one core fewer: its kernels on one thread do the same work in less
    CPU time, and the binning keeps its core. When the model's arithmetic dominates (as
    in ResNet-18), onnxruntime keeps every core.
    """
    if _cores() < 2 or _macs_per_sample(model, info) >= MACS_PER_BINNED_VALUE * binned:
        return None
    return _cores() - 1


def _runs_in_flight(
    info: dict[str, tuple[int, tuple | None]],
    names: list[str],
    providers: Sequence | None,
    batch_size: int | None,
) -> int:
    """How many batches run at once when onnxruntime keeps every core.

    Two on a CPU with two physical cores or more (threads: :func:`_in_flight_threads`):
    onnxruntime's kernels scale less than linearly (im2col, reductions and small layers
    run on one thread), so two runs side by side are 10-25% faster on two cores than one
    on both, with values bit for bit those of one run. One for other execution
    providers (a device runs one batch at a time) and when a batch's activations would
    take more than ``IN_FLIGHT_MAX_BYTES`` (or their size is unknown).
    """
    if _physical_cores() < 2 or any(
        _provider_name(p) != "CPUExecutionProvider" for p in providers or ()
    ):
        return 1
    size = _sample_size(info, names)
    if size is None or size[1] * (batch_size or 1) > IN_FLIGHT_MAX_BYTES:
        return 1
    return RUNS_IN_FLIGHT


def _provider_name(provider: object) -> str:
    """An execution provider's name (given alone or as ``(name, options)``)."""
    return str(provider[0] if isinstance(provider, tuple | list) else provider)


def _known_dims(info: dict[str, tuple[int, tuple | None]], name: str) -> tuple | None:
    """A tensor's inferred dims, or None when any but the first (the batch) is unknown."""
    dims = info.get(name, (0, None))[1]
    return None if dims is None or any(d is None for d in dims[1:]) else dims


def _sample_size(
    info: dict[str, tuple[int, tuple | None]], names: list[str]
) -> tuple[int, int] | None:
    """``(values, bytes)`` one sample has in the tensors ``names`` by inferred shapes (8
    bytes a double, else 4), or None when a size is unknown."""
    values = size = 0
    for name in names:
        dims = _known_dims(info, name)
        if dims is None:
            return None
        n = int(np.prod(dims[1:], dtype=np.int64))
        values += n
        size += n * (8 if info[name][0] == onnx.TensorProto.DOUBLE else 4)
    return values, size


def _macs_per_sample(model: onnx.ModelProto, info: dict[str, tuple[int, tuple | None]]) -> int:
    """Multiply-adds per sample of the model's Conv, ConvTranspose, MatMul and Gemm nodes
    whose shapes are known (others count 0)."""
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        if len(node.input) < 2 or not node.output:
            continue
        a, b, out = (_known_dims(info, n) for n in (node.input[0], node.input[1], node.output[0]))
        if a is None or b is None or out is None or b[0] is None:
            continue
        if node.op_type == "Conv":  # each output: C/group * kernel
            total += int(np.prod(out[1:])) * int(np.prod(b[1:]))
        elif node.op_type == "ConvTranspose":  # each input: M/group * kernel
            total += int(np.prod(a[1:])) * int(np.prod(b[1:]))
        elif node.op_type == "MatMul":
            total += int(np.prod(out[1:])) * int(a[-1])
        else:
            trans_b = any(at.name == "transB" and at.i for at in node.attribute)
            total += int(np.prod(out[1:])) * int(b[1] if trans_b else b[0])
    return total


def _reducible(info: dict[str, tuple[int, tuple | None]], name: str) -> bool:
    elem, dims = info.get(name, (0, None))
    return elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and bool(dims)


def _reduced_batch(info: dict[str, tuple[int, tuple | None]], names: list[str]) -> int:
    """Samples per run from the activation size one sample has (by inferred shapes)."""
    size = _sample_size(info, names)
    if size is None:
        return 1  # unknown sizes: stay safe
    return int(min(MAX_AUTO_BATCH, max(1, BATCH_BUDGET_BYTES // max(size[1], 1))))


def _observe_reduced(
    sess,
    fetch: list[str],
    fetch_reduced: list[str],
    reduce: list[str],
    feed: dict[str, np.ndarray],
    n: int,
    base: int,
) -> Observed | None:
    """Run one batch with in-graph reductions; None if any value is NaN/Inf (or the sum
    overflowed), so that the caller looks at the batch tensor by tensor."""
    out = _run(sess, fetch + fetch_reduced, feed, base)
    values = {**feed, **{k: out[k] for k in fetch}}
    extremes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    in_graph = set(reduce)
    for name, v in values.items():
        if name in in_graph:
            continue
        ext = _extremes(np.asarray(v), n)
        if ext is not None:
            if _bad_rows(ext) is not None:
                return None
            extremes[name] = ext
    reduced = [out[k] for k in fetch_reduced]
    if reduced and not np.isfinite(np.concatenate([r.ravel() for r in reduced])).all():
        return None
    for name in reduce:
        mins, maxs = out[reduced_name("min", name)], out[reduced_name("max", name)]
        if mins.size == 0:
            continue
        if mins.shape[0] != n:  # does not follow the batch axis: one observation
            mins, maxs = np.full(n, mins.min()), np.full(n, maxs.max())
        extremes[name] = (mins, maxs)
    return values, extremes, n


Observed = tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]], int]


def _observe(
    sess,
    fetch: list[str],
    feed: dict[str, np.ndarray],
    n: int,
    base: int,
    skip: bool,
    order: dict[str, int],
) -> Observed | None:
    """Run one batch of ``n`` samples; refuse (or drop) samples with NaN/Inf.

    Returns ``(values by name (inputs included), per-sample extremes, samples kept)``, or
    None when every sample was dropped.
    """
    tensors = _run(sess, fetch, feed, base) if fetch else {}
    values = {**feed, **tensors}
    extremes = {}
    for name, v in values.items():
        ext = _extremes(np.asarray(v), n)
        if ext is not None:
            extremes[name] = ext
    # Inputs first, then graph order: the first tensor to go bad is the one to report.
    first_bad: tuple[int, str] | None = None
    bad: set[int] = set()
    ranked = sorted(extremes, key=lambda k: (k not in feed, order.get(k, len(order))))
    for name in ranked:
        rows = _bad_rows(extremes[name])
        if rows is None:
            continue
        bad.update(int(r) for r in rows)
        if first_bad is None or rows[0] < first_bad[0]:
            first_bad = (int(rows[0]), name)
    if not bad:
        return values, extremes, n
    if n > 1 and len(bad) == n:
        # Every sample flagged: perhaps a tensor that does not follow the batch axis.
        # Look at the samples one by one (this raises for the first bad one).
        good = [
            i
            for i in range(n)
            if _observe(sess, fetch, _rows(feed, [i]), 1, base + i, skip, order) is not None
        ]
        if not good:
            return None
        return _observe(sess, fetch, _rows(feed, good), len(good), base, skip, order)
    if not skip:
        idx, name = first_bad
        raise CalibrationError(
            f"sample {base + idx}: tensor '{name}' has NaN or Inf values "
            "(use skip_nonfinite=True / --skip-nonfinite to skip such samples)"
        )
    for i in sorted(bad):
        warnings.warn(f"skipping calibration sample {base + i}: NaN or Inf values", stacklevel=4)
    keep = [i for i in range(n) if i not in bad]
    return _observe(sess, fetch, _rows(feed, keep), len(keep), base, skip, order)


def _rows(feed: dict[str, np.ndarray], rows: list[int]) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in feed.items()}


def _run(sess, out_names: list[str], feed: dict[str, np.ndarray], base: int) -> dict:
    try:
        values = sess.run(out_names, feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationError(f"sample {base}: onnxruntime failed: {first}") from None
    return dict(zip(out_names, values, strict=True))


def calibrate(
    model: onnx.ModelProto,
    reader: CalibrationDataReader,
    tensor_names: Sequence[str] | None = None,
    method: str = "minmax",
    **options: object,
) -> dict[str, tuple[float, float]]:
    """Calibrate: ``{tensor: (rmin, rmax)}`` as Python floats.

    ``tensor_names`` None calibrates every float activation (node inputs and outputs,
    initializers excluded). ``method`` is one of :data:`~.methods.METHODS`. Options are
    the method's (``moving_average``, ``averaging_constant``, ``percentile``,
    ``num_quantized_bins``, ``num_bits``) and the collector's (``batch_size``,
    ``progress``, ``skip_nonfinite``, ``num_bins``, ``providers``, ``optimize_graph``).
    """
    m = get_method(method)
    collect_opts = {k: options.pop(k) for k in COLLECT_OPTIONS if k in options}
    unknown = set(options) - set(m.options)
    if unknown:
        raise CalibrationError(
            f"calibration method '{m.name}' has no option {', '.join(sorted(unknown))}"
        )
    averaging = None
    if m.name == "minmax" and options.get("moving_average"):
        averaging = float(options.get("averaging_constant", 0.01))
        if not 0.0 < averaging <= 1.0:
            raise CalibrationError(f"averaging_constant must be in (0, 1], got {averaging}")
    stats = collect(
        model,
        reader,
        tensor_names,
        histogram=m.needs_histogram,
        averaging_constant=averaging,
        **collect_opts,
    )
    return compute_ranges(stats, m.name, **options)
