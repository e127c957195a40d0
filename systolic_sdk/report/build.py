"""Collect the report's data: one JSON-ready dict.

Work, over the samples cut into batches:

1. the fp32 model in onnxruntime, with the fp32 counterpart of every quantization point
   as an extra output: value ranges (histogram edges);
2. the quantized model on the emulator, node by node, with the fp32 values again:
   per-layer SQNR of the dequantized output, activation histograms and clipped
   fractions, the exact accumulators of every array layer, output agreement;
3. one sample through the emulator for the array model (per-inference cycles);
4. bit-exactness against onnxruntime (:mod:`systolic_sdk.report.exactness`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from runtime_emulator import datapath as dp
from runtime_emulator.array import (
    ACCEL_OPS,
    F32_EXACT_LIMIT,
    INT32_LIMIT,
    ArrayConfig,
    LayerStats,
    layer_stats,
    record_stats,
    total_utilization,
)
from runtime_emulator.executor import Executor, resolve_target, topological_order
from systolic_sdk.calibration.samples import (
    Feed,
    batches,
    fixed_batch,
    load_samples,
    sample_count,
)
from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import load_model, sha256_file
from systolic_sdk.report.accumulators import input_absmax, layer_accumulators
from systolic_sdk.report.exactness import check_exactness, ort_session
from systolic_sdk.report.mapping import QuantPoint, qparams, quant_points, reference_values
from systolic_sdk.report.reference import choose_reference
from systolic_sdk.report.stats import ClippedHistogram, Extremes, SqnrSum

SCHEMA = "systolic-sdk-report/1"
#: Bytes of fp32 activations held at once (sets the batch size; also the cache limit).
MEMORY_BUDGET = 256 * 2**20
MAX_BATCH = 64


@dataclass
class _Layer:
    """Running statistics of one quantization point."""

    point: QuantPoint
    sqnr: SqnrSum = field(default_factory=SqnrSum)
    acc_lo: int | None = None
    acc_hi: int | None = None
    x_absmax: int = 0
    note: str | None = None


def _num(x: float | None) -> float | str | None:
    """A JSON number; infinities as the strings "inf"/"-inf", NaN as null."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _scalar(a: np.ndarray) -> float | int | None:
    a = np.asarray(a)
    return a.reshape(-1)[0].item() if a.size == 1 else None


class _Progress:
    """A click progress bar on stderr when enabled (default: stderr is a terminal)."""

    def __init__(self, length: int, enabled: bool | None) -> None:
        self._bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled and length > 0:
            import click

            self._bar = click.progressbar(
                length=length, label="report", file=sys.stderr, show_eta=True
            )
            self._bar.__enter__()

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class _Fp32Runner:
    """The fp32 model in onnxruntime with the requested tensors as extra outputs."""

    def __init__(self, model: onnx.ModelProto, names: set[str], what: str) -> None:
        from systolic_sdk.report.exactness import with_outputs

        self.graph_inputs = {i.name for i in model.graph.input}
        wanted = sorted(n for n in names if n not in self.graph_inputs)
        self.what = what
        self.sess = ort_session(with_outputs(model, wanted), what)
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.feed_names = {i.name for i in self.sess.get_inputs()}
        self.available = set(self.outputs) | (names & self.graph_inputs)

    def __call__(self, feeds: Feed) -> dict[str, np.ndarray]:
        try:
            res = self.sess.run(
                self.outputs, {k: v for k, v in feeds.items() if k in self.feed_names}
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            text = str(exc).strip()
            raise SdkError(
                f"{self.what}: onnxruntime fails on the data: "
                f"{text.splitlines()[0] if text else exc}"
            ) from None
        out = dict(zip(self.outputs, res, strict=True))
        out.update({k: v for k, v in feeds.items() if k in self.graph_inputs})
        return out


def build_report(
    quant_model: str | Path,
    fp32_model: str | Path,
    data: str | Path,
    *,
    dim: int = 16,
    max_samples: int | None = 100,
    target: str | None = None,
    bins: int = 64,
    progress: bool | None = None,
) -> dict[str, Any]:
    """The report of ``quant_model`` (quantized from ``fp32_model``) on ``data``."""
    quant_model, fp32_model, data = Path(quant_model), Path(fp32_model), Path(data)
    if max_samples is not None and max_samples < 1:
        raise SdkError(f"max_samples must be >= 1, got {max_samples}")
    if bins < 1:
        raise SdkError(f"bins must be >= 1, got {bins}")
    qmodel = load_model(quant_model)
    fmodel = load_model(fp32_model)
    check_roles(qmodel, quant_model, fmodel, fp32_model)
    target = resolve_target(qmodel, target)
    config = ArrayConfig(dim=dim)
    samples = load_samples(data, fmodel, max_samples)
    order = topological_order(qmodel.graph)
    reference = choose_reference(fmodel, qmodel)
    points = quant_points(qmodel, reference.model, order)
    q_inits = {t.name: onnx.numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    out_names = [o.name for o in qmodel.graph.output]
    wanted = {p.fp32 for p in points if p.fp32} | {p.result_fp32 for p in points if p.result_fp32}
    fp32_runner = _Fp32Runner(reference.model, wanted | set(out_names), str(fp32_model))
    executor = Executor(qmodel, target=target, config=config)
    feeds_probe = {k: v[:1] for k, v in samples.items()}
    try:
        executor.validate_feeds(feeds_probe)
    except SdkError as exc:
        raise SdkError(f"{data}: does not fit {quant_model.name}: {exc}") from None

    fixed = fixed_batch(qmodel)
    n_samples = sample_count(samples)
    if fixed is not None:
        if n_samples < fixed:
            raise SdkError(f"{data}: {n_samples} samples, the model's batch size is {fixed}")
        size = fixed
    else:
        probe = fp32_runner(feeds_probe)
        per_sample = max(1, sum(v.nbytes for v in probe.values()))
        size = int(min(MAX_BATCH, max(1, MEMORY_BUDGET // (2 * per_sample))))
    feeds_list = batches(samples, size, whole=fixed is not None)
    n_used = sum(sample_count(f) for f in feeds_list)
    bar = _Progress(3 * len(feeds_list) + 1, progress)
    try:
        return _collect(
            qmodel=qmodel,
            target=target,
            config=config,
            points=points,
            q_inits=q_inits,
            out_names=out_names,
            fp32_runner=fp32_runner,
            executor=executor,
            feeds_list=feeds_list,
            bins=bins,
            bar=bar,
            inference_batch=fixed or 1,
            meta={
                "schema": SCHEMA,
                "model": str(quant_model),
                "model_sha256": sha256_file(quant_model),
                "fp32_model": str(fp32_model),
                "fp32_sha256": sha256_file(fp32_model),
                "fp32_reference": reference.label,
                "weight_sqnr_db": {k: _num(v) for k, v in reference.weight_sqnr_db.items()},
                "data": str(data),
                "sdk_version": _sdk_version(),
                "onnxruntime_version": _ort_version(),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "samples": n_used,
                "batches": len(feeds_list),
                "batch_size": size,
                "target": target,
                "dim": dim,
                "cycles_batch": fixed or 1,
            },
        )
    finally:
        bar.close()


def check_roles(qmodel: onnx.ModelProto, qpath: Path, fmodel: onnx.ModelProto, fpath: Path) -> None:
    """The quantized model holds quantized tensors; the fp32 model holds none."""
    from systolic_sdk.report.mapping import OUTPUT_QPARAMS

    quantizing = set(OUTPUT_QPARAMS) | {"DequantizeLinear"}
    node = next((n for n in fmodel.graph.node if n.op_type in quantizing), None)
    if node is not None:
        raise SdkError(
            f"{fpath}: is a quantized model (node '{node.name}' is {node.op_type}); "
            "--fp32 takes the float model it came from"
        )
    if not any(n.op_type in quantizing for n in qmodel.graph.node):
        raise SdkError(f"{qpath}: has no quantized tensors (no QuantizeLinear or QLinear* node)")


def _sdk_version() -> str:
    from systolic_sdk import __version__

    return __version__


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _point_values(point: QuantPoint, fp32: Mapping[str, np.ndarray]) -> np.ndarray | None:
    if point.fp32 is None or point.fp32 not in fp32:
        return None
    v = np.asarray(fp32[point.fp32], np.float32)
    return np.maximum(v, np.float32(0)) if point.relu else v


def _collect(
    *,
    qmodel: onnx.ModelProto,
    target: str,
    config: ArrayConfig,
    points: list[QuantPoint],
    q_inits: dict[str, np.ndarray],
    out_names: list[str],
    fp32_runner: _Fp32Runner,
    executor: Executor,
    feeds_list: list[Feed],
    bins: int,
    bar: _Progress,
    meta: dict[str, Any],
    inference_batch: int,
) -> dict[str, Any]:
    layers = {p.index: _Layer(p) for p in points}
    for lay in layers.values():
        if lay.point.fp32 is None:
            lay.note = "no fp32 counterpart found by name"
        elif lay.point.fp32 not in fp32_runner.available:
            lay.note = f"fp32 tensor '{lay.point.fp32}' cannot be fetched from onnxruntime"
        elif lay.point.result_fp32 not in fp32_runner.available:
            lay.note = f"fp32 tensor '{lay.point.result_fp32}' cannot be fetched from onnxruntime"

    # Pass 1: fp32 ranges (kept in memory while they fit the budget).
    extremes = {i: Extremes() for i in layers}
    cache: list[dict[str, np.ndarray]] | None = []
    cached_bytes = 0
    for feeds in feeds_list:
        ref = fp32_runner(feeds)
        for i, lay in layers.items():
            v = _point_values(lay.point, ref)
            if v is not None:
                extremes[i].add(v)
        if cache is not None:
            cached_bytes += sum(v.nbytes for v in ref.values())
            cache = cache + [ref] if cached_bytes <= MEMORY_BUDGET else None
        bar.step()

    hists: dict[int, ClippedHistogram] = {}
    qp: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, lay in layers.items():
        params = qparams(lay.point, q_inits)
        if params is None:
            lay.note = lay.note or f"scale '{lay.point.scale_name}' is not an initializer"
            continue
        qp[i] = params
        scale, zp = params
        ext = extremes[i]
        if scale.size != 1 or zp.size != 1 or ext.lo > ext.hi:
            continue
        qmin, qmax = dp.qrange(zp.dtype) if zp.dtype in dp.INT_RANGES else (-128, 127)
        s, z = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])
        clip_lo, clip_hi = s * (qmin - z), s * (qmax - z)
        hists[i] = ClippedHistogram(
            lo=min(ext.lo, clip_lo), hi=max(ext.hi, clip_hi), bins=bins,
            scale=s, zero_point=z, qmin=qmin, qmax=qmax,
        )  # fmt: skip

    # Pass 2: the emulator node by node against the fp32 values.
    results = {lay.point.result_index: lay for lay in layers.values() if lay.point.is_layer}
    out_sqnr = {n: SqnrSum() for n in out_names}
    top1 = {n: [0, 0] for n in out_names}
    for k, feeds in enumerate(feeds_list):
        ref = cache[k] if cache is not None else fp32_runner(feeds)
        for i, h in hists.items():
            v = _point_values(layers[i].point, ref)
            if v is not None:
                h.add(v)
        for rec in executor.iter_nodes(feeds):
            res = results.get(rec.index)
            if res is not None and res.note is None and res.point.index in qp:
                p = res.point
                q = rec.outputs.get(p.result)
                if q is not None and p.result_fp32 in ref:
                    scale, zp = qp[p.index]
                    try:
                        want = reference_values(p, ref[p.result_fp32], q.shape, result=True)
                    except ValueError as exc:
                        res.note = str(exc)
                    else:
                        res.sqnr.add(want, dp.dequantize_linear(q, scale, zp))
            lay = layers.get(rec.index)
            if lay is None:
                continue
            node = rec.node
            if node.op_type in ACCEL_OPS:
                args = [rec.inputs.get(n) if n else None for n in node.input]
                acc = layer_accumulators(node, args)
                if acc.size:
                    lo, hi = int(acc.min()), int(acc.max())
                    lay.acc_lo = lo if lay.acc_lo is None else min(lay.acc_lo, lo)
                    lay.acc_hi = hi if lay.acc_hi is None else max(lay.acc_hi, hi)
                lay.x_absmax = max(lay.x_absmax, input_absmax(args))
        env = executor.last_env
        for n in out_names:
            if n in env and n in ref:
                got, want = np.asarray(env[n]), np.asarray(ref[n])
                if got.shape != want.shape:
                    continue
                out_sqnr[n].add(want, got)
                if got.ndim >= 1 and got.shape[-1] > 1:
                    g = got.reshape(-1, got.shape[-1]).argmax(-1)
                    w = want.reshape(-1, want.shape[-1]).argmax(-1)
                    top1[n][0] += int(np.count_nonzero(g == w))
                    top1[n][1] += g.size
        bar.step()

    # The array model on one inference (the first sample, or the model's fixed batch).
    one = {k: v[:inference_batch] for k, v in feeds_list[0].items()}
    stats: dict[int, tuple[LayerStats, onnx.NodeProto, list, dict]] = {}
    for rec in executor.iter_nodes(one):
        st = record_stats(rec, config)
        if st is not None:
            shapes = [rec.inputs[n].shape if n in rec.inputs else None for n in rec.node.input]
            consts = {n: rec.inputs[n] for n in rec.node.input if n in q_inits}
            stats[rec.index] = (st, rec.node, shapes, consts)
    bar.step()

    exactness = check_exactness(qmodel, feeds_list, target)
    for _ in feeds_list:
        bar.step()

    return _assemble(meta, layers, hists, qp, stats, out_sqnr, top1, exactness, config)


def _assemble(
    meta: dict[str, Any],
    layers: dict[int, _Layer],
    hists: dict[int, ClippedHistogram],
    qp: dict[int, tuple[np.ndarray, np.ndarray]],
    stats: dict[int, tuple[LayerStats, onnx.NodeProto, list, dict]],
    out_sqnr: dict[str, SqnrSum],
    top1: dict[str, list[int]],
    exactness: dict[str, Any],
    config: ArrayConfig,
) -> dict[str, Any]:
    layer_rows = []
    for i in sorted(layers):
        lay = layers[i]
        p = lay.point
        if not p.is_layer:
            continue
        scale, zp = qp.get(i, (np.array([]), np.array([])))
        row: dict[str, Any] = {
            "index": i,
            "name": p.layer_name,
            "op": p.layer_op,
            "tensor": p.result,
            "fp32_tensor": p.result_fp32,
            "output": p.tensor,
            "clamped_by": list(p.clamped_by),
            "relu": p.relu,
            "layout": "NHWC" if p.nhwc else "NCHW",
            "scale": _scalar(scale),
            "zero_point": _scalar(zp),
            "sqnr_db": _num(lay.sqnr.db),
            "on_array": p.op_type in ACCEL_OPS,
            "note": lay.note,
            "array": None,
            "accumulator": None,
        }
        if i in stats:
            st, node, shapes, consts = stats[i]
            row["array"] = {
                "I": st.I, "J": st.J, "K": st.K, "groups": st.groups, "tiles": st.tiles,
                "ideal_cycles": st.ideal_cycles, "est_cycles": st.est_cycles,
                "utilization": st.utilization, "sp_fits": st.sp_fits,
                "acc_passes": st.acc_passes, "input_shape": list(st.input_shape),
                "output_shape": list(st.output_shape),
            }  # fmt: skip
            observed = layer_stats(node, shapes, consts, config=config, x_absmax=lay.x_absmax)
            absmax = None
            if lay.acc_lo is not None and lay.acc_hi is not None:
                absmax = max(abs(lay.acc_lo), abs(lay.acc_hi))
            obs_flags = []
            if absmax is not None and absmax > F32_EXACT_LIMIT:
                obs_flags.append("f32>2^24")
            if lay.acc_lo is not None and (lay.acc_lo < -(2**31) or lay.acc_hi > INT32_LIMIT):
                obs_flags.append("wrap>2^31")
            row["accumulator"] = {
                "min": lay.acc_lo,
                "max": lay.acc_hi,
                "absmax": absmax,
                "bound": st.acc_bound,
                "bound_x_absmax": st.x_absmax,
                "bound_flags": list(st.acc_flags),
                "bound_observed_input": observed.acc_bound,
                "x_absmax_observed": lay.x_absmax,
                "observed_flags": obs_flags,
            }
        layer_rows.append(row)

    hist_rows = []
    for i in sorted(hists):
        h = hists[i]
        p = layers[i].point
        scale, zp = qp[i]
        hist_rows.append(
            {
                "tensor": p.tensor,
                "fp32_tensor": p.fp32,
                "relu": p.relu,
                "clamped_by": list(p.clamped_by),
                "node": p.node,
                "op": p.op_type,
                "dtype": str(zp.dtype),
                "scale": _scalar(scale),
                "zero_point": _scalar(zp),
                "clip": [h.clip_lo, h.clip_hi],
                "edges": [h.lo, h.hi],
                "counts": h.counts.tolist(),
                "count": h.total,
                "clipped_below": h.below,
                "clipped_above": h.above,
                "clipped_fraction": h.clipped_fraction,
                "nonfinite": h.nonfinite,
            }
        )

    array_stats = [s[0] for s in stats.values()]
    totals = {
        "layers": len(layer_rows),
        "array_layers": len(array_stats),
        "tiles": sum(s.tiles for s in array_stats),
        "ideal_cycles": sum(s.ideal_cycles for s in array_stats),
        "est_cycles": sum(s.est_cycles for s in array_stats),
        "utilization": total_utilization(array_stats),
        "macs": sum(s.groups * s.I * s.J * s.K for s in array_stats),
    }
    by_name = {o["name"]: o for o in exactness.get("outputs", [])}
    outputs = []
    for name, sq in out_sqnr.items():
        hits, total = top1[name]
        ex = by_name.get(name, {})
        outputs.append(
            {
                "name": name,
                "sqnr_db": _num(sq.db),
                "top1_agreement": hits / total if total else None,
                "bit_exact": ex.get("bit_exact"),
                "n_diff": ex.get("n_diff"),
                "first_divergence": ex.get("first_divergence"),
            }
        )
    unmapped = [
        {"tensor": lay.point.tensor, "node": lay.point.node, "note": lay.note}
        for lay in layers.values()
        if lay.note
    ]
    return {
        "meta": meta,
        "limits": {"f32_exact": F32_EXACT_LIMIT, "int32": INT32_LIMIT},
        "outputs": outputs,
        "exactness": exactness,
        "layers": layer_rows,
        "totals": totals,
        "activations": hist_rows,
        "unmapped": unmapped,
    }
