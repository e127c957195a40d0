"""Run a whole quantized ONNX graph: emulator kernels for the quantized ops, a float
reference for every other op.

Nodes whose (domain, op_type) has an emulator kernel (``runtime_emulator.kernels``)
run bit-exactly on the Systolic datapath. Every other node runs as a one-node model
(cached per node and input dtypes) on onnxruntime, falling back to
``onnx.reference.ReferenceEvaluator`` when onnxruntime cannot run it; com.microsoft
contrib ops without a kernel (QLinearGlobalAveragePool, QLinearSigmoid, QGemm, ...)
run on onnxruntime only, since onnx.reference lacks them. Both references implement
the ONNX semantics of the node at the model's opset.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from runtime_emulator import threads
from runtime_emulator.array import ArrayConfig, LayerStats, record_stats
from runtime_emulator.kernels import SYSTOLIC_DOMAIN, TARGETS, KernelContext, lookup
from runtime_emulator.ort_engine import small_session
from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import load_model

#: The model metadata key written by the SDK's quantizer naming the target backend.
BACKEND_METADATA_KEY = "systolic_sdk.backend"
#: Ops that exist only in Systolic graphs (in the default domain or the SDK's own).
SYSTOLIC_ONLY_OPS = ("QLinearRelu", "QLinearConv_nhwc")
#: How non-kernel nodes run: onnxruntime first, onnx.reference first or only.
FLOAT_BACKENDS = ("auto", "onnxruntime", "reference")

_ORT_DOMAINS = ("com.microsoft",)


class FeedError(SdkError):
    """A feed does not match the model's graph inputs (missing, unknown, dtype, shape)."""


class ExecutionError(SdkError):
    """A node cannot be executed (no kernel and no reference implementation)."""


class TargetError(SdkError):
    """The target backend is not one of ``TARGETS``."""


@dataclass
class NodeRecord:
    """One executed node: its identity, its input and output arrays, and who ran it.

    ``backend`` is ``"kernel"`` (the emulator's datapath), ``"onnxruntime"``,
    ``"reference"`` (onnx.reference) or ``"constant"``.
    """

    index: int
    name: str
    op_type: str
    domain: str
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    backend: str
    node: onnx.NodeProto = field(repr=False)


def load_kernels() -> None:
    """Import every emulator kernel module (registers them); clear error if absent."""
    try:
        importlib.import_module("runtime_emulator.kernels.all")
    except ModuleNotFoundError as exc:
        if exc.name == "runtime_emulator.kernels.all":
            raise ImportError(
                "runtime_emulator.kernels.all is missing: the emulator's kernel modules "
                "are not installed, so quantized ops cannot be emulated"
            ) from None
        raise


def resolve_target(model: onnx.ModelProto, target: str | None = None) -> str:
    """The backend a graph is meant for: ``"systolic"`` or ``"cpu"``.

    Rule: an explicit ``target`` wins; else the model's metadata key
    ``systolic_sdk.backend`` (written by the SDK's quantizer); else ``"systolic"``
    when the graph holds a Systolic-only op (QLinearRelu, QLinearConv_nhwc), a node
    in the ``com.systolic`` domain, or a QLinear* node with a ``relu`` attribute,
    and ``"cpu"`` otherwise (standard ONNX + com.microsoft ops made by another tool).
    """
    if target is None:
        meta = {p.key: p.value for p in model.metadata_props}
        if BACKEND_METADATA_KEY in meta:
            target = meta[BACKEND_METADATA_KEY]
            if target not in TARGETS:
                raise TargetError(
                    f"model metadata {BACKEND_METADATA_KEY}='{target}' is not one of "
                    f"{', '.join(TARGETS)}"
                )
            return target
        return "systolic" if _looks_systolic(model.graph) else "cpu"
    if target not in TARGETS:
        raise TargetError(f"target '{target}' is not one of {', '.join(TARGETS)}")
    return target


def _looks_systolic(graph: onnx.GraphProto) -> bool:
    for node in graph.node:
        if node.op_type in SYSTOLIC_ONLY_OPS or node.domain == SYSTOLIC_DOMAIN:
            return True
        if node.op_type.startswith("QLinear") and any(a.name == "relu" for a in node.attribute):
            return True
    return False


def _subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names used by the node's subgraphs (If/Loop/Scan bodies)."""
    used: list[str] = []

    def walk(graph: onnx.GraphProto, defined: set[str]) -> None:
        defined = defined | {t.name for t in graph.initializer} | {i.name for i in graph.input}
        for n in graph.node:
            for name in n.input:
                if name and name not in defined and name not in used:
                    used.append(name)
            for attr in n.attribute:
                for sub in _attr_graphs(attr):
                    walk(sub, defined)
            defined |= set(n.output)

    for attr in node.attribute:
        for sub in _attr_graphs(attr):
            walk(sub, set())
    return used


def _attr_graphs(attr: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if attr.type == onnx.AttributeProto.GRAPH:
        return [attr.g]
    if attr.type == onnx.AttributeProto.GRAPHS:
        return list(attr.graphs)
    return []


def topological_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in a dependency order (stable: keeps the file order when it is valid)."""
    nodes = list(graph.node)
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
    deps: list[set[int]] = []
    for node in nodes:
        names = [n for n in node.input if n] + _subgraph_inputs(node)
        deps.append({producer[n] for n in names if n in producer})
    users: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    pending = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    import heapq

    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if pending[i] > 0)
        raise ExecutionError(
            f"node '{stuck.name or stuck.op_type}': the graph has a cycle through it"
        )
    return [nodes[i] for i in order]


def _elem_dtype(elem_type: int) -> np.dtype | None:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return None


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "sparse_value":
            from onnx.reference import ReferenceEvaluator

            return ReferenceEvaluator(node).run(None, {})[0]
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
        if attr.name == "value_string":
            return np.array(attr.s.decode(), dtype=object)
        if attr.name == "value_strings":
            return np.array([s.decode() for s in attr.strings], dtype=object)
    raise ExecutionError(f"node '{node.name or 'Constant'}': Constant without a value attribute")


class _FloatNode:
    """A non-kernel node run as a cached one-node model on onnxruntime or onnx.reference."""

    def __init__(
        self,
        node: onnx.NodeProto,
        opsets: list[onnx.OperatorSetIdProto],
        ir_version: int,
        backend: str,
        ort_threads: int,
    ) -> None:
        self.node = node
        self.opsets = opsets
        self.ir_version = ir_version
        self.backend = backend
        self.ort_threads = ort_threads
        # Unique input names, explicit then implicit (outer-scope names of subgraphs).
        names: list[str] = []
        for n in list(node.input) + _subgraph_inputs(node):
            if n and n not in names:
                names.append(n)
        self.input_names = names
        self._cache: dict[tuple, tuple[str, Any]] = {}

    def _model(self, dtypes: tuple[np.dtype, ...]) -> onnx.ModelProto:
        inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(dt), None)
            for n, dt in zip(self.input_names, dtypes, strict=False)
        ]
        outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in self.node.output if o]
        graph = helper.make_graph([self.node], "node", inputs, outputs)
        model = helper.make_model(graph, opset_imports=self.opsets)
        model.ir_version = self.ir_version
        return model

    def _runner(self, dtypes: tuple[np.dtype, ...]) -> tuple[str, Any]:
        key = tuple(str(d) for d in dtypes)
        if key in self._cache:
            return self._cache[key]
        model = self._model(dtypes)
        contrib = self.node.domain in _ORT_DOMAINS
        order = ["onnxruntime", "reference"]
        if self.backend == "reference" and not contrib:
            order = ["reference", "onnxruntime"]
        errors: list[str] = []
        runner: tuple[str, Any] | None = None
        for which in order:
            if which == "reference" and contrib:
                continue
            try:
                runner = (which, _make_session(which, model, self.ort_threads))
                break
            except Exception as exc:  # noqa: BLE001 - try the next reference
                errors.append(f"{which}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
        if runner is None:
            node = self.node
            raise ExecutionError(
                f"node '{node.name or node.op_type}' ({node.domain or 'ai.onnx'}::"
                f"{node.op_type}): no emulator kernel, and no reference can run it "
                f"({'; '.join(errors)})"
            )
        self._cache[key] = runner
        return runner

    def __call__(self, env: Mapping[str, np.ndarray]) -> tuple[str, list[np.ndarray]]:
        arrays = [env[n] for n in self.input_names]
        which, sess = self._runner(tuple(a.dtype for a in arrays))
        feeds = dict(zip(self.input_names, arrays, strict=False))
        outs = sess.run(None, feeds)
        return which, [np.asarray(o) for o in outs]


def _make_session(which: str, model: onnx.ModelProto, threads: int) -> Any:
    if which == "onnxruntime":
        return small_session(model, threads, "enable_basic")
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model)


class Executor:
    """A loaded graph ready to run many times (kernels looked up, sessions cached).

    ``iter_nodes(feeds)`` yields a :class:`NodeRecord` per node in execution order
    (for node-by-node comparison); ``run(feeds, trace=...)`` returns the outputs, or
    every tensor by name with ``trace=True``.

    ``float_backend`` says how nodes without an emulator kernel run: ``"auto"`` and
    ``"onnxruntime"`` try onnxruntime first, then onnx.reference; ``"reference"`` tries
    onnx.reference first (com.microsoft contrib ops always run on onnxruntime).
    ``ort_threads`` is onnxruntime's intra-op thread count for those nodes.
    """

    def __init__(
        self,
        model: onnx.ModelProto | str,
        *,
        target: str | None = None,
        config: ArrayConfig | None = None,
        float_backend: str = "auto",
        ort_threads: int = 2,
    ) -> None:
        if float_backend not in FLOAT_BACKENDS:
            raise ValueError(f"float_backend must be one of {FLOAT_BACKENDS}")
        load_kernels()
        self.model = load_model(model)
        self.config = config or ArrayConfig()
        self.target = resolve_target(self.model, target)
        graph = self.model.graph
        self.graph = graph
        self.opsets = {
            ("" if o.domain == "ai.onnx" else o.domain): o.version for o in self.model.opset_import
        }
        self.initializers: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        for sp in graph.sparse_initializer:
            self.initializers[sp.values.name] = _dense(sp)
        for arr in self.initializers.values():
            # Constants: kernels may prepare derived data (e.g. float32 weights) once
            # per model, keyed on these very arrays, so they must not change.
            arr.flags.writeable = False
        self.inputs = [vi for vi in graph.input if vi.name not in self.initializers]
        self.optional_inputs = [vi for vi in graph.input if vi.name in self.initializers]
        self.output_names = [o.name for o in graph.output]
        self.nodes = topological_order(graph)
        opset_list = list(self.model.opset_import)
        self._plans: list[tuple[str, Any, dict[str, Any], KernelContext | None]] = []
        for node in self.nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self._plans.append(("constant", _constant_value(node), {}, None))
                continue
            kernel = lookup(node.domain, node.op_type)
            if kernel is not None:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                domain = "" if node.domain == "ai.onnx" else node.domain
                ctx = KernelContext(
                    target=self.target,
                    node_name=node.name or node.op_type,
                    opset=self.opsets.get(domain, self.opsets.get("", 13)),
                    extra={
                        "array": self.config,
                        **_output_request(node),
                        "constant_inputs": self._constant_inputs(node),
                    },
                )
                self._plans.append(("kernel", kernel, attrs, ctx))
            else:
                runner = _FloatNode(
                    node, opset_list, self.model.ir_version, float_backend, ort_threads
                )
                self._plans.append(("float", runner, {}, None))
        self._last_use = self._compute_last_use()

    def _constant_inputs(self, node: onnx.NodeProto) -> frozenset[int]:
        """Positions of the node's inputs that are initializers no feed can replace (the
        same read-only array on every run)."""
        fed = {vi.name for vi in self.optional_inputs}
        return frozenset(
            i
            for i, name in enumerate(node.input)
            if name and name in self.initializers and name not in fed
        )

    def _compute_last_use(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in list(node.input) + _subgraph_inputs(node):
                if name:
                    last[name] = i
        for name in self.output_names:
            last[name] = len(self.nodes)
        return last

    def validate_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Check feeds against the graph inputs; one error naming the input otherwise."""
        known = {vi.name for vi in self.inputs} | {vi.name for vi in self.optional_inputs}
        unknown = [k for k in feeds if k not in known]
        if unknown:
            raise FeedError(
                f"input '{unknown[0]}' is not an input of the model "
                f"(its inputs: {', '.join(vi.name for vi in self.inputs) or 'none'})"
            )
        out: dict[str, np.ndarray] = {}
        for vi in self.inputs + self.optional_inputs:
            if vi.name not in feeds:
                if vi.name in self.initializers:
                    continue
                raise FeedError(f"input '{vi.name}' is missing (expected {_describe(vi)})")
            arr = feeds[vi.name]
            if not isinstance(arr, np.ndarray):
                arr = np.asarray(arr)
            ttype = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if ttype is not None and ttype.elem_type:
                want = _elem_dtype(ttype.elem_type)
                if want is not None and arr.dtype != want:
                    raise FeedError(
                        f"input '{vi.name}': dtype {arr.dtype}, expected {want} "
                        f"(expected {_describe(vi)})"
                    )
            if ttype is not None and ttype.HasField("shape"):
                dims = ttype.shape.dim
                bad = arr.ndim != len(dims) or any(
                    d.HasField("dim_value") and d.dim_value != s
                    for d, s in zip(dims, arr.shape, strict=False)
                )
                if bad:
                    raise FeedError(
                        f"input '{vi.name}': shape {list(arr.shape)}, expected {_describe(vi)}"
                    )
            out[vi.name] = arr
        return out

    def iter_nodes(self, feeds: Mapping[str, Any], *, keep: bool = False) -> Iterator[NodeRecord]:
        """Run the graph, yielding one :class:`NodeRecord` per node in execution order.

        Intermediate tensors are freed after their last consumer unless ``keep``;
        after the iteration, :attr:`last_env` holds the graph outputs (every tensor
        when ``keep``).
        """
        env: dict[str, np.ndarray] = dict(self.initializers)
        env.update(self.validate_feeds(feeds))
        self.last_env = env
        last_use = self._last_use
        for i, (node, (kind, impl, attrs, ctx)) in enumerate(
            zip(self.nodes, self._plans, strict=False)
        ):
            missing = [n for n in node.input if n and n not in env]
            if missing:
                raise ExecutionError(
                    f"node '{node.name or node.op_type}': input '{missing[0]}' is produced by "
                    "no node, initializer or graph input"
                )
            ins = {n: env[n] for n in node.input if n}
            if kind == "constant":
                backend, results = "constant", [impl]
            elif kind == "kernel":
                args = [env[n] if n else None for n in node.input]
                try:
                    with threads.single_threaded_blas():
                        results = impl(args, attrs, ctx)
                except SdkError:
                    raise
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(f"while running node '{node.name}' ({node.op_type})")
                    raise
                backend = "kernel"
            else:
                backend, results = impl(env)
            outs: dict[str, np.ndarray] = {}
            for name, value in zip(node.output, results, strict=False):
                if name:
                    env[name] = value
                    outs[name] = value
            yield NodeRecord(i, node.name, node.op_type, node.domain, ins, outs, backend, node)
            if not keep:
                for name in list(ins) + list(outs):
                    if last_use.get(name, -1) <= i and name in env:
                        del env[name]
        for name in self.output_names:
            if name not in env:
                raise ExecutionError(f"graph output '{name}' is produced by no node")

    def layer_stats(
        self, feeds: Mapping[str, Any], *, observed: bool = False
    ) -> tuple[dict[str, np.ndarray], list[LayerStats]]:
        """Run once; the outputs and the array statistics of every accelerator layer
        (``observed``: accumulator bounds from the inputs' actual range)."""
        stats = []
        for rec in self.iter_nodes(feeds):
            st = record_stats(rec, self.config, observed=observed)
            if st is not None:
                stats.append(st)
        return {name: self.last_env[name] for name in self.output_names}, stats

    def run(self, feeds: Mapping[str, Any], *, trace: bool = False) -> dict[str, np.ndarray]:
        """The graph outputs by name; with ``trace``, every tensor by name (graph inputs,
        intermediates, outputs; initializers excluded)."""
        for _ in self.iter_nodes(feeds, keep=trace):
            pass
        env = self.last_env
        if trace:
            return {k: v for k, v in env.items() if k not in self.initializers or k in feeds}
        return {name: env[name] for name in self.output_names}


def _output_request(node: onnx.NodeProto) -> dict[str, Any]:
    """Which outputs the node asks for: ``wanted_outputs`` (one flag per declared
    output; an omitted optional output is an empty name) and ``num_outputs`` (the
    number of leading outputs up to the last wanted one, so trailing omitted
    outputs are not computed)."""
    wanted = [bool(name) for name in node.output]
    num = max((i + 1 for i, w in enumerate(wanted) if w), default=0)
    return {"num_outputs": num, "wanted_outputs": wanted}


def _dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    """A sparse initializer as a dense array."""
    arr = np.zeros(list(sp.dims), dtype=helper.tensor_dtype_to_np_dtype(sp.values.data_type))
    vals = numpy_helper.to_array(sp.values)
    idx = numpy_helper.to_array(sp.indices)
    if idx.ndim == 1:
        arr.reshape(-1)[idx] = vals
    else:
        arr[tuple(idx.T)] = vals
    return arr


def _describe(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    dt = _elem_dtype(t.elem_type) if t.elem_type else None
    if t.HasField("shape"):
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim
        ]
        shape = "[" + ",".join(str(d) for d in dims) + "]"
    else:
        shape = "any shape"
    return f"{dt if dt is not None else 'any dtype'} {shape}"


def run(
    model: onnx.ModelProto | str,
    feeds: Mapping[str, Any],
    *,
    trace: bool = False,
    config: ArrayConfig | None = None,
    target: str | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` (a ModelProto or a path) on ``feeds``; the outputs by name.

    Quantized ops run on the emulator's bit-exact kernels, every other op on a float
    reference (onnxruntime, or onnx.reference when onnxruntime cannot run it). With
    ``trace=True`` every tensor is returned: graph inputs, intermediates, outputs.
    ``target`` ("systolic" or "cpu") selects the meaning of com.microsoft QLinearAdd;
    when None it is read from the model (see :func:`resolve_target`). ``config`` is the
    :class:`ArrayConfig` handed to the kernels (``ctx.extra["array"]``).
    """
    return Executor(model, target=target, config=config).run(feeds, trace=trace)
