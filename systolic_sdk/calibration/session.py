"""The model side of calibration: which tensors to calibrate, and onnxruntime sessions
that expose them (as extra outputs, or as per-sample in-graph reductions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx

from systolic_sdk.calibration.methods import CalibrationError

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}
# Models smaller than this go to onnxruntime as bytes; larger ones through a temporary
# file, so that no second copy of the weights is held in memory.
INLINE_MODEL_BYTES = 32 << 20


def required_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (the ones a sample must provide)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the data of its float initializers (for shape inference).

    Shape inference reads initializer dims and the values of small integer tensors
    (Reshape shapes, ...), never float weights, so those are left out to save memory.
    """
    light = onnx.ModelProto(
        ir_version=model.ir_version,
        opset_import=model.opset_import,
        functions=model.functions,
    )
    src, dst = model.graph, light.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    for t in src.initializer:
        if t.data_type in FLOAT_TYPES:
            dst.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
        else:
            dst.initializer.append(t)
    return light


def tensor_info(model: onnx.ModelProto) -> dict[str, tuple[int, tuple | None]]:
    """``{tensor: (element type or 0, dims or None)}`` after shape inference; a dim is
    an int, or None when symbolic or unknown."""
    light = _light_copy(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is best effort (custom ops)
        inferred = light
    info: dict[str, tuple[int, tuple | None]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            dims = None
            if tt.HasField("shape"):
                dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
            info[vi.name] = (tt.elem_type, dims)
    for t in model.graph.initializer:
        info[t.name] = (t.data_type, tuple(t.dims))
    return info


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor after shape inference (0 when unknown)."""
    return {name: elem for name, (elem, _) in tensor_info(model).items()}


def calibratable_tensors(model: onnx.ModelProto, types: dict[str, int] | None = None) -> list[str]:
    """Every float tensor that is a node input or output, initializers excluded.

    Tensors whose type shape inference cannot tell are included; non-float results are
    dropped when they are first seen at run time.
    """
    types = tensor_types(model) if types is None else types
    inits = {t.name for t in model.graph.initializer}
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in list(node.input) + list(node.output):
            if not name or name in seen or name in inits:
                continue
            seen.add(name)
            if types.get(name, 0) in FLOAT_TYPES or types.get(name, 0) == 0:
                names.append(name)
    return names


def check_names(model: onnx.ModelProto, names: Sequence[str]) -> None:
    known = {i.name for i in model.graph.input}
    for node in model.graph.node:
        known.update(n for n in node.input if n)
        known.update(n for n in node.output if n)
    inits = {t.name for t in model.graph.initializer}
    for name in names:
        if name in inits:
            raise CalibrationError(
                f"tensor '{name}' is an initializer (a constant); only activations are calibrated"
            )
        if name not in known:
            raise CalibrationError(f"tensor '{name}' is not in the model")


def augment_model(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs include ``names`` (graph inputs excluded)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output} | {i.name for i in out.graph.input}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out


Bounds = tuple[float | None, float | None]


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors by name."""
    overridable = {i.name for i in model.graph.input}
    out = {t.name: t for t in model.graph.initializer if t.name not in overridable}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


def _bound(name: str, constants: dict[str, onnx.TensorProto]) -> float | None | bool:
    """A Clip bound input as a float, None when absent, False when not a finite constant."""
    if not name:
        return None
    t = constants.get(name)
    if t is None:
        return False
    v = onnx.numpy_helper.to_array(t)
    if v.size != 1 or v.dtype != np.float32 or not np.isfinite(v).all():
        return False
    return float(v.reshape(()))


def _clip_bounds(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> Bounds | None:
    """The (lo, hi) a Relu/Clip/Identity/Flatten(axis=1) applies, or None if not one."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
        return None
    if node.op_type in ("Identity",) or (node.op_type == "Flatten" and attrs.get("axis", 1) == 1):
        return None, None
    if node.op_type == "Relu":
        return 0.0, None
    if node.op_type == "Clip":
        if "min" in attrs or "max" in attrs or len(node.input) == 1:  # opset < 11: attributes
            lo, hi = attrs.get("min"), attrs.get("max")
            lo = None if lo is None or lo <= -FLT_MAX else float(np.float32(lo))
            hi = None if hi is None or hi >= FLT_MAX else float(np.float32(hi))
            return lo, hi
        lo = _bound(node.input[1], constants)
        hi = _bound(node.input[2], constants) if len(node.input) > 2 else None
        if lo is False or hi is False:
            return None
        return lo, hi
    return None


FLT_MAX = float(np.finfo(np.float32).max)


def _compose(outer: Bounds, inner: Bounds) -> Bounds:
    """Bounds of ``clip(clip(x, *inner), *outer)``: a clip too, from the images of -inf/+inf."""
    from systolic_sdk.calibration.stats import clip_value

    lo = clip_value(clip_value(-math.inf, inner), outer)
    hi = clip_value(clip_value(math.inf, inner), outer)
    return (None if lo == -math.inf else lo), (None if hi == math.inf else hi)


def derived_tensors(
    model: onnx.ModelProto,
    names: Sequence[str],
    info: dict[str, tuple[int, tuple | None]],
) -> dict[str, tuple[str, Bounds]]:
    """Tensors of ``names`` that are another one's values clipped: ``{tensor: (source,
    (lo, hi))}`` with ``tensor == clip(source, lo, hi)`` elementwise (None: no bound).

    They are the float32 outputs of Relu, Clip with constant bounds, Identity and
    Flatten(axis=1) (chains resolved), whose source is in ``names``: the same shape per
    sample, and values that are the source's or a bound. Their extremes (and NaN/Inf)
    follow from the source's, and their histograms from the source's values.
    """
    wanted = set(names)
    constants = _constants(model)
    direct: dict[str, tuple[str, Bounds]] = {}
    for node in model.graph.node:
        if len(node.output) != 1 or node.output[0] not in wanted:
            continue
        src, out = node.input[0] if node.input else "", node.output[0]
        if info.get(src, (0,))[0] != onnx.TensorProto.FLOAT:
            continue
        if info.get(out, (0,))[0] != onnx.TensorProto.FLOAT:
            continue
        bounds = _clip_bounds(node, constants)
        if bounds is not None and src != out:
            direct[out] = (src, bounds)
    resolved: dict[str, tuple[str, Bounds] | None] = {}

    def resolve(name: str) -> tuple[str, Bounds] | None:
        """(calibrated source that is not derived itself, composed bounds), or None."""
        if name not in resolved:
            resolved[name] = None  # also guards against cycles
            if name in direct:
                src, bounds = direct[name]
                up = resolve(src) if src in direct else None
                if up is not None:
                    resolved[name] = (up[0], _compose(bounds, up[1]))
                elif src in wanted:
                    resolved[name] = (src, bounds)
        return resolved[name]

    out = {name: resolve(name) for name in names}
    return {name: r for name, r in out.items() if r is not None}


REDUCED = ("min", "max", "sum")
_REDUCE_PREFIX = "__systolic_calib_"


def reduced_name(kind: str, name: str) -> str:
    """Graph output holding the per-sample ``kind`` (min/max/sum) of tensor ``name``."""
    return f"{_REDUCE_PREFIX}{kind}__{name}"


def _reduction_nodes(
    model: onnx.ModelProto, names: Sequence[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Per-sample ReduceMin/ReduceMax/ReduceSum of each tensor (flattened from axis 1).

    The sum is the NaN/Inf detector: IEEE sums propagate NaN and Inf, where onnxruntime's
    ReduceMin/ReduceMax may skip a NaN.
    """
    import onnx.helper as oh

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axes = f"{_REDUCE_PREFIX}axes"
    inits = [onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes)]
    nodes = []
    for i, name in enumerate(names):
        flat = f"{_REDUCE_PREFIX}flat_{i}"
        nodes.append(oh.make_node("Flatten", [name], [flat], axis=1, name=flat))
        for kind, op, since in (
            ("min", "ReduceMin", 18),
            ("max", "ReduceMax", 18),
            ("sum", "ReduceSum", 13),
        ):
            out = reduced_name(kind, name)
            if opset >= since:
                nodes.append(oh.make_node(op, [flat, axes], [out], keepdims=0, name=out))
            else:
                nodes.append(oh.make_node(op, [flat], [out], axes=[1], keepdims=0, name=out))
    return nodes, inits


def open_session(
    model: onnx.ModelProto,
    names: Sequence[str],
    providers: Sequence[str] | None,
    reduce: Sequence[str] = (),
    sleep_idle_threads: bool = False,
    optimize: bool = False,
    threads: int | None = None,
    concurrent: bool = False,
):
    """An onnxruntime session of ``model`` with ``names`` as extra outputs, and the
    per-sample min/max/sum of the tensors ``reduce`` (see :func:`reduced_name`).

    The additions live in ``model`` only while it is serialized (no copy of the
    weights). Graph optimizations are off by default, as in onnxruntime's own
    calibrators, so every value is bit for bit the unoptimized run's. ``optimize``:
    onnxruntime's full optimizations (its blocked NCHWc convolution kernels: 1.2-2x
    faster); fetched tensors stay (a node whose output is a graph output is never fused
    away), their values may differ from the unoptimized run's in the last bits. A model
    that onnxruntime cannot optimize falls back to the unoptimized session.
    ``sleep_idle_threads``: onnxruntime's idle threads sleep rather than spin (for a
    caller that works in a thread of its own meanwhile). ``threads``: onnxruntime's
    intra-op threads (None: its default, one per core). ``concurrent``: the session runs
    several batches at once, so onnxruntime's memory pattern is off (each concurrent run
    would pre-allocate a block of its own: 20-40 MB more peak RSS on EfficientNet-Lite0
    at equal speed).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    so.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    if concurrent:
        so.enable_mem_pattern = False
    if sleep_idle_threads:
        # Idle threads sleep instead of spinning: the caller's own thread (the histogram
        # binning) gets the cores between operators; results are unchanged. Otherwise
        # onnxruntime's default (spinning: faster on an idle machine, as its own
        # calibrators run).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    graph = model.graph
    sizes = len(graph.output), len(graph.node), len(graph.initializer)
    present = {o.name for o in graph.output} | {i.name for i in graph.input}
    try:
        for name in dict.fromkeys(names):
            if name not in present:
                graph.output.add(name=name)
        if reduce:
            nodes, inits = _reduction_nodes(model, reduce)
            graph.node.extend(nodes)
            graph.initializer.extend(inits)
            for kind in REDUCED:
                graph.output.extend(onnx.ValueInfoProto(name=reduced_name(kind, n)) for n in reduce)
        try:
            return _load(model, so, providers)
        except CalibrationError:
            if not optimize:
                raise
            so.graph_optimization_level = level.ORT_DISABLE_ALL
            return _load(model, so, providers)
    finally:
        del graph.output[sizes[0] :]
        del graph.node[sizes[1] :]
        del graph.initializer[sizes[2] :]


def _load(model: onnx.ModelProto, so, providers: Sequence[str] | None):
    import tempfile

    import onnxruntime as ort

    providers = list(providers or ["CPUExecutionProvider"])
    try:
        data = model.SerializeToString()  # once: ByteSize() would take about as long
        if len(data) < INLINE_MODEL_BYTES:
            return ort.InferenceSession(data, so, providers=providers)
        with tempfile.TemporaryDirectory(prefix="systolic-calib-") as tmp:
            path = f"{tmp}/augmented.onnx"
            with open(path, "wb") as fh:
                fh.write(data)
            del data
            return ort.InferenceSession(path, so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CalibrationError(
            f"onnxruntime cannot load the model for calibration: {first}"
        ) from None
