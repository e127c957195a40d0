"""Validate a Systolic graph: emulator against its standard-ONNX lowering in onnxruntime.

Every tensor that exists by name in both graphs is compared bit for bit, in the
emulator's execution order. A divergence at a node whose inputs agree is a *root*
divergence and gets a cause from :func:`classify_element`; divergences downstream of
a root one are reported as propagated. The quantized outputs are also compared with
the float model's (top-1 agreement, SQNR in dB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_emulator import datapath as dp
from runtime_emulator import ort_engine
from runtime_emulator.executor import Executor, topological_order
from systolic_sdk.errors import SdkError

F32 = np.float32
TIE = "tie rounding"
SATURATION = "saturation"
LARGE_ACC = "float32 conversion of a large accumulator"
POOL_PADDING = "pool padding rule"
UNEXPLAINED = "unexplained"
PROPAGATED = "propagated"
MISMATCH = "shape or element type mismatch"
#: Causes that are documented rules of the hardware (a difference they explain is expected).
DOCUMENTED = frozenset({POOL_PADDING})
RULE_NOTES = {
    POOL_PADDING: "accelerator conv path: a fused-pool window position in the pool padding "
    "counts as 0 (ONNX MaxPool excludes it)",
}

Lowering = Callable[[onnx.ModelProto], onnx.ModelProto]


@dataclass
class Divergence:
    """The first differing element of one tensor."""

    tensor: str
    node: str
    op_type: str
    index: tuple[int, ...]
    emulator: float
    lowered: float
    cause: str
    #: Which feed dict (batch) of ``feeds_list`` showed it first.
    batch: int = 0


@dataclass
class TensorComparison:
    """One tensor present in both graphs."""

    name: str
    node: str
    bit_exact: bool
    n_diff: int
    first: Divergence | None = None
    causes: dict[str, int] = field(default_factory=dict)


@dataclass
class OutputReport:
    """One graph output: exactness against the lowering, agreement with the float model."""

    name: str
    bit_exact: bool
    n_diff: int
    first: Divergence | None
    top1_agreement: float | None
    sqnr_db: float | None


@dataclass
class ValidationReport:
    outputs: list[OutputReport]
    tensors: list[TensorComparison]
    first_divergence: Divergence | None
    notes: list[str]
    #: Feed dicts run, and samples in them (the first input's leading dimension).
    batches: int
    samples: int

    @property
    def bit_exact(self) -> bool:
        return all(t.bit_exact for t in self.tensors) and all(o.bit_exact for o in self.outputs)

    @property
    def ok(self) -> bool:
        """Bit-exact, or every root divergence is a documented hardware rule."""
        return all(
            cause in DOCUMENTED or cause == PROPAGATED for t in self.tensors for cause in t.causes
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["bit_exact"] = self.bit_exact
        return _jsonable(d)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def classify_requant(
    acc: np.ndarray,
    multiplier: np.ndarray,
    zero_point: int = 0,
    *,
    relu: bool = False,
    dtype: np.dtype | type = np.int8,
) -> list[str]:
    """:func:`classify_element` for arrays of accumulators and multipliers (same shape);
    ``dtype`` is the output's integer type (its range decides saturation)."""
    acc = np.asarray(acc, np.int64).reshape(-1)
    v = dp.scale_accumulator(acc, np.asarray(multiplier, F32).reshape(-1)).astype(np.float64)
    zp = int(zero_point)
    lo, hi = dp.qrange(np.dtype(dtype))
    causes = np.full(acc.shape, UNEXPLAINED, dtype=object)
    with np.errstate(invalid="ignore"):
        r = dp.rne(v) + zp
        tie = np.isfinite(v) & (v - np.floor(v) == 0.5)
        sat = ~np.isfinite(v) | (r < lo) | (r > hi)
    causes[tie] = TIE
    causes[sat] = SATURATION
    causes[np.abs(acc) > 2**24] = LARGE_ACC
    if relu:
        causes[v + zp <= 0] = UNEXPLAINED
    return [str(c) for c in causes]


def classify_element(
    acc: int,
    multiplier: float,
    zero_point: int = 0,
    *,
    relu: bool = False,
    dtype: np.dtype | type = np.int8,
) -> str:
    """Why an int8 requantized element ``sat8(rne(f32(f32(acc) * M)) + zp)`` may differ
    from another implementation: a float32 conversion of an accumulator beyond 2**24,
    saturation, an exact tie, or unexplained. With a fused ``relu``, an element at or
    below the zero point is 0 whatever the rounding, so none of these can explain it."""
    return classify_requant(
        np.array([acc]), np.array([multiplier]), zero_point, relu=relu, dtype=dtype
    )[0]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _vec(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).reshape(-1)


def _requant_inputs(
    node: onnx.NodeProto, env: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, int, int] | None:
    """(int64 accumulator with bias, multiplier per element, y zero point, channel axis)
    for a QLinearConv / QLinearConv_nhwc / QLinearMatMul node, or None."""
    ins = [env.get(n) if n else None for n in node.input] + [None] * 9
    for i in (2, 5, 7):  # an omitted zero point is 0
        if ins[i] is None and (i >= len(node.input) or not node.input[i]):
            ins[i] = np.zeros((), np.int64)
    if any(v is None for v in ins[:8]):
        return None
    x, sx, zx, w, sw, zw, sy, zy = ins[:8]
    xi = np.asarray(x, np.int64) - np.asarray(zx, np.int64)
    attrs = _attrs(node)
    if node.op_type == "QLinearMatMul":
        wi = np.asarray(w, np.int64) - np.asarray(zw, np.int64)
        acc = np.matmul(xi, wi)
        axis = acc.ndim - 1
    else:
        nhwc = node.op_type == "QLinearConv_nhwc"
        w64 = np.asarray(w, np.int64)
        if nhwc:
            xi = xi.transpose(0, 3, 1, 2)
            w64 = w64.transpose(3, 2, 0, 1)
        zw_b = np.asarray(zw, np.int64).reshape(-1, *([1] * (w64.ndim - 1)))
        wi = w64 - zw_b
        spatial = list(xi.shape[2:])
        kernel = list(wi.shape[2:])
        strides = list(attrs.get("strides") or [1] * len(spatial))
        dilations = list(attrs.get("dilations") or [1] * len(spatial))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        pads = dp.resolve_pads(auto_pad, spatial, kernel, strides, dilations, attrs.get("pads"))
        acc = dp.conv_accumulate(
            xi,
            wi,
            strides=strides,
            pads=pads,
            dilations=dilations,
            group=int(attrs.get("group", 1)),
        )
        if ins[8] is not None:
            acc = acc + np.asarray(ins[8], np.int64).reshape(1, -1, *([1] * (acc.ndim - 2)))
        if nhwc:
            acc = acc.transpose(0, 2, 3, 1)
            axis = 3
        else:
            axis = 1
    m = dp.requant_multiplier(sx, sw, sy)
    shape = [1] * acc.ndim
    shape[axis] = -1
    m_full = np.broadcast_to(np.asarray(m, F32).reshape(shape if m.size > 1 else ()), acc.shape)
    return acc, m_full, int(_vec(zy)[0]), axis


def _pool_padding_hits(
    node: onnx.NodeProto, env: Mapping[str, np.ndarray], idx: tuple[int, ...]
) -> bool:
    """True when the fused-pool window of output element ``idx`` (NHWC) of an
    accelerator-path QLinearConv_nhwc touches the pool padding."""
    from runtime_emulator.kernels.qlinear_conv_nhwc import _resolved_conv_geometry, conv_path

    attrs = _attrs(node)
    if not int(attrs.get("maxpool", 0)):
        return False
    x, w = env.get(node.input[0]), env.get(node.input[3])
    if x is None or w is None or conv_path(attrs, x.shape, w.shape) != "accelerator":
        return False
    _, _, _, _, out = _resolved_conv_geometry(attrs, x.shape, w.shape)
    pk = list(attrs.get("pool_kernel_shape") or [1, 1])
    ps = list(attrs.get("pool_strides") or [1, 1])
    pp = list(attrs.get("pool_pads") or [0, 0, 0, 0])
    for d in range(2):
        start = idx[1 + d] * ps[d] - pp[0]  # the accelerator pads pool_pads[0] all round
        if start < 0 or start + pk[d] > out[d]:
            return True
    return False


def _classify_tensor(
    node: onnx.NodeProto, env: Mapping[str, np.ndarray], diff_idx: np.ndarray
) -> list[str]:
    """A cause per differing element (rows of ``diff_idx``) of a root-divergence node."""
    if node.op_type == "QLinearConv_nhwc" and int(_attrs(node).get("maxpool", 0)):
        return [
            POOL_PADDING if _pool_padding_hits(node, env, tuple(map(int, i))) else UNEXPLAINED
            for i in diff_idx
        ]
    if node.op_type in ("QLinearConv", "QLinearConv_nhwc", "QLinearMatMul"):
        parts = _requant_inputs(node, env)
        if parts is None:
            return [UNEXPLAINED] * len(diff_idx)
        acc, m, zy, _ = parts
        relu = bool(int(_attrs(node).get("relu", 0)))
        sel = tuple(diff_idx.T)
        dtype = np.asarray(env[node.output[0]]).dtype if node.output[0] in env else np.int8
        return classify_requant(acc[sel], m[sel], zy, relu=relu, dtype=dtype)
    if node.op_type == "QLinearAdd":
        return [_classify_add(node, env, tuple(map(int, i))) for i in diff_idx]
    return [UNEXPLAINED] * len(diff_idx)


def _classify_add(node: onnx.NodeProto, env: Mapping[str, np.ndarray], idx: tuple) -> str:
    """A cause for one differing element of a QLinearAdd (the accelerator's rule: each
    input rescaled with sat8(rne(f32(q) * f32(s / s_c))), then summed and saturated)."""
    ins = [env.get(n) if n else None for n in node.input] + [None] * 8
    if any(ins[i] is None for i in (0, 1, 3, 4, 6)):
        return UNEXPLAINED
    a, sa, _, b, sb, _, sc = ins[:7]
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    relu = bool(int(_attrs(node).get("relu", 0)))
    total = 0
    for v, s in ((a, sa), (b, sb)):
        x = int(np.broadcast_to(v, shape)[idx])
        m = np.divide(np.asarray(s, F32), np.asarray(sc, F32), dtype=F32)
        cause = classify_element(x, float(_vec(m)[0]))
        if cause != UNEXPLAINED:
            return cause
        total += int(dp.rescale_saturate(np.array([x]), s, sc)[0])
    if not -128 <= total <= 127 and not (relu and total < 0):
        return SATURATION
    return UNEXPLAINED


def _with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs include every typed intermediate tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(out)
    except Exception:  # noqa: BLE001 - fall back to the declared value_info
        inferred = out
    known = {vi.name: vi for vi in inferred.graph.value_info}
    present = {o.name for o in out.graph.output}
    for node in out.graph.node:
        for name in node.output:
            if name and name not in present and name in known:
                vi = known[name]
                if vi.type.tensor_type.elem_type:
                    out.graph.output.append(vi)
                    present.add(name)
    return out


def _ort_run(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], what: str
) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SdkError(f"{what}: onnxruntime cannot load it: {first}") from None
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    outs = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outs, strict=True))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """``10 log10(sum ref^2 / sum (ref - test)^2)`` in float64 (inf when equal)."""
    r = np.asarray(reference, np.float64)
    e = r - np.asarray(test, np.float64)
    noise, signal = float(np.sum(e * e)), float(np.sum(r * r))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _default_lowering(model: onnx.ModelProto) -> onnx.ModelProto:
    from systolic_sdk.backends import get_backend

    return get_backend("systolic").lower(model)


def validate(
    quant_model: onnx.ModelProto,
    fp32_model: onnx.ModelProto | None,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    *,
    lowering: Lowering | None = None,
) -> ValidationReport:
    """Compare the emulator's run of ``quant_model`` with its lowering in onnxruntime on
    every feed dict, tensor by tensor, and its outputs with ``fp32_model``'s. The emulator
    side always runs the NumPy datapath (engine ``numpy``), so onnxruntime is never
    compared with itself."""
    lowered = (lowering or _default_lowering)(quant_model)
    lowered_all = _with_all_outputs(lowered)
    lowered_outputs = {o.name for o in lowered.graph.output}
    missing = [o.name for o in quant_model.graph.output if o.name not in lowered_outputs]
    if missing:
        raise SdkError(f"the lowered model has no output '{missing[0]}' (outputs keep their names)")
    executor = Executor(quant_model, target="systolic")
    order = topological_order(quant_model.graph)
    out_names = [o.name for o in quant_model.graph.output]
    graph_inputs = {i.name for i in quant_model.graph.input}
    consts = {t.name: numpy_helper.to_array(t) for t in quant_model.graph.initializer}
    graph_inputs |= set(consts)

    tensors: dict[str, TensorComparison] = {}
    outputs_q: dict[str, list[np.ndarray]] = {n: [] for n in out_names}
    outputs_f: dict[str, list[np.ndarray]] = {n: [] for n in out_names}
    for k, feeds in enumerate(feeds_list):
        with ort_engine.using("numpy"):
            emu = {**consts, **executor.run(feeds, trace=True)}
        low = _ort_run(lowered_all, feeds, "the lowered model")
        diverged: set[str] = set()
        for node in order:
            for name in node.output:
                if not name or name in graph_inputs or name not in emu or name not in low:
                    continue
                a, b = np.asarray(emu[name]), np.asarray(low[name])
                comp = tensors.setdefault(name, TensorComparison(name, node.name, True, 0))
                same = a.shape == b.shape and a.dtype == b.dtype
                mask = (a != b) & ~(np.isnan(a) & np.isnan(b)) if same else None
                if same and not mask.any():
                    continue
                diverged.add(name)
                comp.bit_exact = False
                root = not any(i in diverged for i in node.input)
                if mask is None:
                    comp.n_diff += max(a.size, b.size)
                    comp.causes[MISMATCH] = comp.causes.get(MISMATCH, 0) + 1
                    if comp.first is None:
                        comp.first = Divergence(
                            name, node.name, node.op_type, (), math.nan, math.nan, MISMATCH, k
                        )
                    continue
                idx = np.argwhere(mask)
                comp.n_diff += len(idx)
                causes = _classify_tensor(node, emu, idx) if root else [PROPAGATED] * len(idx)
                for c in causes:
                    comp.causes[c] = comp.causes.get(c, 0) + 1
                if comp.first is None:
                    i0 = tuple(int(v) for v in idx[0])
                    comp.first = Divergence(
                        name, node.name, node.op_type, i0, a[i0].item(), b[i0].item(), causes[0], k
                    )
        for n in out_names:
            outputs_q[n].append(np.asarray(emu[n]))
        if fp32_model is not None:
            ref = _ort_run(fp32_model, feeds, "the float model")
            for n in out_names:
                if n in ref:
                    outputs_f[n].append(np.asarray(ref[n]))

    ordered = [tensors[n] for node in order for n in node.output if n in tensors]
    first = next((t.first for t in ordered if t.first is not None), None)
    outputs = []
    for n in out_names:
        comp = tensors.get(n)
        top1 = sqnr = None
        if outputs_f[n] and len(outputs_f[n]) == len(outputs_q[n]):
            q = np.concatenate([x.reshape(-1, x.shape[-1]) for x in outputs_q[n]])
            f = np.concatenate([x.reshape(-1, x.shape[-1]) for x in outputs_f[n]])
            sqnr = sqnr_db(f, q)
            if q.shape[-1] > 1:
                top1 = float(np.mean(np.argmax(q, -1) == np.argmax(f, -1)))
        outputs.append(
            OutputReport(
                n,
                comp.bit_exact if comp else True,
                comp.n_diff if comp else 0,
                comp.first if comp else None,
                top1,
                sqnr,
            )
        )
    used = {c for t in ordered for c in t.causes if c in DOCUMENTED}
    notes = [f"{c}: {RULE_NOTES[c]}" for c in sorted(used)]
    samples = sum(int(np.shape(next(iter(f.values())))[0] or 0) for f in feeds_list if f)
    return ValidationReport(outputs, ordered, first, notes, len(feeds_list), samples)
