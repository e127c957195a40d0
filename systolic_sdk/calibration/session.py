"""The model side of calibration: which tensors to calibrate, and onnxruntime sessions
that expose them (as extra outputs, or as per-sample in-graph reductions)."""

from __future__ import annotations

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
):
    """An onnxruntime session of ``model`` with ``names`` as extra outputs, and the
    per-sample min/max/sum of the tensors ``reduce`` (see :func:`reduced_name`).

    The additions live in ``model`` only while it is serialized (no copy of the
    weights); graph optimizations are off, as in onnxruntime's own calibrators, so every
    tensor is the fp32 model's.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
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
        if model.ByteSize() < INLINE_MODEL_BYTES:
            return ort.InferenceSession(model.SerializeToString(), so, providers=providers)
        with tempfile.TemporaryDirectory(prefix="systolic-calib-") as tmp:
            path = f"{tmp}/augmented.onnx"
            with open(path, "wb") as fh:
                fh.write(model.SerializeToString())
            return ort.InferenceSession(path, so, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CalibrationError(
            f"onnxruntime cannot load the model for calibration: {first}"
        ) from None
