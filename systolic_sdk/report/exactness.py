"""Bit-exactness of the emulator against onnxruntime, per graph output.

Systolic graphs are checked by :func:`runtime_emulator.validate.validate` (the emulator
against the standard-ONNX lowering in onnxruntime, tensor by tensor, with causes). A
graph for the CPU target is already standard ONNX (plus com.microsoft ops), so the
emulator (CPU meaning of QLinearAdd) is compared with onnxruntime running the graph
itself, every tensor both produce, in execution order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import onnx

from runtime_emulator import ort_engine
from runtime_emulator.executor import Executor, topological_order
from systolic_sdk.errors import SdkError

LOWERING_REFERENCE = "onnxruntime on the standard-ONNX lowering (runtime_emulator.validate)"
DIRECT_REFERENCE = "onnxruntime on the quantized graph itself"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and x != x:
        return None
    return x


def _divergence(d: Any) -> dict[str, Any] | None:
    """A validate.Divergence as the report's dict (its ``lowered`` value is ``reference``)."""
    if d is None:
        return None
    out = _jsonable(asdict(d))
    out["reference"] = out.pop("lowered")
    return out


def check_systolic(
    qmodel: onnx.ModelProto, feeds_list: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, Any]:
    """Emulator vs the lowering in onnxruntime (``runtime_emulator.validate``)."""
    from runtime_emulator.validate import validate

    rep = validate(qmodel, None, feeds_list)
    return {
        "status": "ok",
        "reference": LOWERING_REFERENCE,
        "bit_exact": rep.bit_exact,
        "explained": rep.ok,
        "tensors_compared": len(rep.tensors),
        "tensors_exact": sum(t.bit_exact for t in rep.tensors),
        "first_divergence": _divergence(rep.first_divergence),
        "outputs": [
            {
                "name": o.name,
                "bit_exact": o.bit_exact,
                "n_diff": o.n_diff,
                "first_divergence": _divergence(o.first),
            }
            for o in rep.outputs
        ],
        "notes": list(rep.notes),
    }


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (typed from shape inference)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(out)
        known = {vi.name: vi for vi in inferred.graph.value_info}
    except Exception:  # noqa: BLE001 - custom domains can defeat inference
        known = {}
    present = {o.name for o in out.graph.output}
    for name in names:
        if name in present:
            continue
        vi = known.get(name)
        if vi is not None and vi.type.tensor_type.elem_type:
            out.graph.output.append(vi)
            present.add(name)
    return out


def ort_session(model: onnx.ModelProto, what: str) -> Any:
    """An onnxruntime CPU session without graph optimizations (intermediates kept)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise SdkError(f"{what}: onnxruntime cannot load it: {first}") from None


def check_direct(
    qmodel: onnx.ModelProto,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    target: str,
) -> dict[str, Any]:
    """Emulator vs onnxruntime on the same (standard) graph, every common tensor."""
    order = topological_order(qmodel.graph)
    produced = [o for n in order for o in n.output if o]
    sess = ort_session(with_outputs(qmodel, produced), "the quantized model")
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    executor = Executor(qmodel, target=target)
    out_names = [o.name for o in qmodel.graph.output]
    n_diff: dict[str, int] = {}
    first: dict[str, dict[str, Any]] = {}
    compared: set[str] = set()
    for k, feeds in enumerate(feeds_list):
        with ort_engine.using("numpy"):  # onnxruntime is the other side
            emu = executor.run(feeds, trace=True)
        res = sess.run(names, {n: v for n, v in feeds.items() if n in wanted})
        ref = dict(zip(names, res, strict=True))
        for node in order:
            for name in node.output:
                if not name or name not in emu or name not in ref:
                    continue
                compared.add(name)
                a, b = np.asarray(emu[name]), np.asarray(ref[name])
                if a.shape != b.shape or a.dtype != b.dtype:
                    n_diff[name] = n_diff.get(name, 0) + max(a.size, b.size)
                    first.setdefault(name, _first(name, node, (), None, None, k))
                    continue
                mask = (a != b) & ~(np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a != b
                if mask.any():
                    idx = tuple(int(i) for i in np.argwhere(mask)[0])
                    n_diff[name] = n_diff.get(name, 0) + int(np.count_nonzero(mask))
                    first.setdefault(name, _first(name, node, idx, a[idx], b[idx], k))
    in_order = [o for o in produced if o in first]
    return {
        "status": "ok",
        "reference": DIRECT_REFERENCE,
        "bit_exact": not n_diff,
        "explained": not n_diff,
        "tensors_compared": len(compared),
        "tensors_exact": len(compared) - len(n_diff),
        "first_divergence": first[in_order[0]] if in_order else None,
        "outputs": [
            {
                "name": n,
                "bit_exact": n not in n_diff,
                "n_diff": n_diff.get(n, 0),
                "first_divergence": first.get(n),
            }
            for n in out_names
        ],
        "notes": [],
    }


def _first(name: str, node: onnx.NodeProto, idx: tuple, a: Any, b: Any, batch: int) -> dict:
    return _jsonable(
        {
            "tensor": name,
            "node": node.name,
            "op_type": node.op_type,
            "index": list(idx),
            "emulator": None if a is None else a.item(),
            "reference": None if b is None else b.item(),
            "cause": "differs" if a is not None else "shape or element type mismatch",
            "batch": batch,
        }
    )


def check_exactness(
    qmodel: onnx.ModelProto, feeds_list: Sequence[Mapping[str, np.ndarray]], target: str
) -> dict[str, Any]:
    """The bit-exactness section; ``status`` "unavailable" with a reason when the
    reference cannot run the graph."""
    try:
        if target == "systolic":
            return check_systolic(qmodel, feeds_list)
        return check_direct(qmodel, feeds_list, target)
    except SdkError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"status": "unavailable", "reason": reason, "bit_exact": None, "outputs": []}
