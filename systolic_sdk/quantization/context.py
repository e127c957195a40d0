"""RewriteContext: what an op rule sees during the walk.

The graph and options, each edge's quantized state, the parameters of activations
(calibrated ranges or tensor overrides, through the backend's hooks), and helpers that
emit nodes and initializers: QuantizeLinear only when a float edge is first requested
quantized, one DequantizeLinear per quantized edge that a float reader needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from systolic_sdk.errors import QuantizationError
from systolic_sdk.graph.util import NameScope, consumers, opset_version, subgraph_inputs
from systolic_sdk.quantization.config import QuantConfig, TensorOverride
from systolic_sdk.quantization.params import QuantParams, quant_range
from systolic_sdk.quantization.state import EdgeState, EdgeStates
from systolic_sdk.quantization.types import OutputForm, QuantType

F32 = np.float32
MS_DOMAIN = "com.microsoft"


class RewriteContext:
    """What a rule sees: the graph, the options, the edge states, and emission helpers."""

    def __init__(
        self,
        model: onnx.ModelProto,
        config: QuantConfig,
        backend,
        ranges: Mapping[str, tuple[float, float]] | None,
    ) -> None:
        self.model = model
        self.graph = model.graph
        self.config = config
        self.backend = backend
        self.form: OutputForm = config.form
        self.static: bool = config.static
        self.ranges: dict[str, tuple[float, float]] = {
            k: (_scalar(v[0]), _scalar(v[1])) for k, v in (ranges or {}).items()
        }
        self.opset = opset_version(model)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.names = NameScope(self.graph)
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[TensorProto] = []
        self.inserted: set[str] = set()  # names of nodes the walk inserted (Q, DQ, ...)
        self.states = EdgeStates()
        self.graph_outputs = {o.name for o in self.graph.output}
        self.consumers = consumers(self.graph)
        self.producer_names = {o for n in self.graph.node for o in n.output if o}
        self.types: dict[str, int] = {}
        for v in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                self.types[v.name] = v.type.tensor_type.elem_type
        for t in self.graph.initializer:
            self.types[t.name] = t.data_type
        self.shapes: dict[str, tuple] = {}
        for v in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                dims = v.type.tensor_type.shape.dim
                self.shapes[v.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else None for d in dims
                )
        opts = config.extra_options
        self.symmetric_activations: bool = _pick(
            config.symmetric_activations,
            opts.get("ActivationSymmetric"),
            backend.default_symmetric_activations,
        )
        self.symmetric_weights: bool = _pick(
            config.symmetric_weights, opts.get("WeightSymmetric"), config.weight_type.signed
        )
        self.force_quantize = bool(opts.get("ForceQuantizeNoInputCheck", False))
        self.matmul_const_b_only = bool(opts.get("MatMulConstBOnly", False))
        self.keep_removable_activations = bool(opts.get("QDQKeepRemovableActivations", False))
        self.minimum_real_range = opts.get("MinimumRealRange")
        self.float_output_ops = frozenset(opts.get("OpTypesToExcludeOutputQuantization") or ())
        self._act_params: dict[str, QuantParams] = {}
        self._pinned: set[str] = set()
        self.current: onnx.NodeProto | None = None
        self.uses_ms_domain = False
        self.enlarged_biases: list[str] = []  # biases whose weight scale the guard enlarged

    # ---- queries -------------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def constant(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def is_float(self, name: str) -> bool:
        return self.types.get(name) == TensorProto.FLOAT

    def is_activation(self, name: str) -> bool:
        """A float tensor computed at run time (not a constant)."""
        return bool(name) and self.is_float(name) and not self.is_constant(name)

    def rank(self, name: str) -> int | None:
        if self.is_constant(name):
            return len(self.initializers[name].dims)
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def where(self) -> str:
        return f"node '{self.current.name}'" if self.current is not None else "graph"

    # ---- parameters ----------------------------------------------------------------
    def activation_params(self, name: str) -> QuantParams:
        """Static parameters of an activation: its override, else its calibrated range."""
        if name in self._act_params:
            return self._act_params[name]
        qtype = self.config.activation_type
        override = self.config.tensor_overrides.get(name)
        rng = self.ranges.get(name)
        if override is not None:
            params = self.override_params(name, override, qtype, None, rng)
        elif rng is None:
            raise QuantizationError(
                f"tensor '{name}' (read or written by {self.where()}): no calibration range; "
                "static quantization needs a range or a tensor override for it"
            )
        else:
            lo, hi = rng
            if self.minimum_real_range is not None:
                # onnxruntime's MinimumRealRange: widen tiny ranges (rmin kept, rmax raised)
                lo, hi = min(lo, 0.0), max(hi, 0.0)
                hi = max(hi, lo + float(self.minimum_real_range))
            try:
                params = self.backend.activation_params(
                    lo, hi, qtype, self.symmetric_activations, False
                )
            except ValueError as exc:
                raise QuantizationError(f"tensor '{name}': {exc}") from None
        self._act_params[name] = params
        return params

    def fixed_params(self, name: str) -> QuantParams | None:
        """Parameters an activation must have whatever its range: its tensor override, or
        those pinned to it by :meth:`pin_params`; None when it has neither."""
        if name in self.config.tensor_overrides or name in self._pinned:
            return self.activation_params(name)
        return None

    def pin_params(self, name: str, params: QuantParams) -> None:
        """Give activation ``name`` fixed parameters (before the walk), e.g. those of the
        overridden output of a Relu it alone feeds, so its producer quantizes into them."""
        self._pinned.add(name)
        self._act_params[name] = params

    def output_params(self, name: str, params: QuantParams) -> QuantParams:
        """The parameters of output edge ``name``: its fixed parameters, else ``params``."""
        fixed = self.fixed_params(name)
        return params if fixed is None else fixed

    def honour_override(self, name: str) -> None:
        """After a rule rewrote the node producing ``name``: when the tensor has an
        override and its quantized edge has other parameters, requantize the edge
        (DequantizeLinear -> QuantizeLinear with the override's parameters)."""
        if name not in self.config.tensor_overrides:
            return
        state = self.edge(name)
        if state is None:
            return
        if state.params is None:
            raise QuantizationError(
                f"tensor '{name}' (output of {self.where()}): its override cannot be honoured: "
                "its quantization parameters are computed at run time"
            )
        want = self.activation_params(name)
        if want.same_as(state.params):
            return
        old = state.params
        raw = self.fresh(f"{name}_requantize")
        extra = {"axis": old.axis} if old.per_channel else {}
        self.add_node(
            "DequantizeLinear", [state.q_name, state.scale_name, state.zp_name], [raw], **extra
        )
        self.types[raw] = TensorProto.FLOAT
        q = self.fresh(f"{name}_quantized")
        s, z = self.params_initializers(name, want)
        new = EdgeState(name, q, s, z, want.qtype, want, state.float_available)
        self.states.replace(new)
        self.types[q] = want.qtype.onnx_type
        extra = {"axis": want.axis} if want.per_channel else {}
        self.add_node("QuantizeLinear", [raw, new.scale_name, new.zp_name], [q], **extra)

    def weight_params(self, name: str, per_channel: bool, axis: int) -> QuantParams:
        """Parameters of a constant: its override, else computed from its values."""
        qtype = self.config.weight_type
        w = self.constant(name)
        override = self.config.tensor_overrides.get(name)
        if override is not None and not override.scale and override.rmin is None is override.rmax:
            # quant_type / symmetric / reduce_range / axis only: computed from the values, as
            # onnxruntime does: per channel only when the override names an axis; a weight
            # overridden to another type takes the activations' symmetry by default
            wtype = override.quant_type or qtype
            per_channel = override.axis is not None and w.ndim > 0 and w.size > 0
            axis = override.axis if override.axis is not None else axis
            default_sym = self.symmetric_weights if wtype == qtype else self.symmetric_activations
            symmetric = _pick(override.symmetric, default_sym)
            rr = _pick(override.reduce_range, self.config.reduce_range)
            try:
                return self.backend.weight_params(w, wtype, per_channel, axis, symmetric, rr)
            except ValueError as exc:
                raise QuantizationError(f"tensor '{name}': {exc}") from None
        if override is not None:
            wmin = w.min(axis=tuple(i for i in range(w.ndim) if i != axis)) if w.size else 0
            wmax = w.max(axis=tuple(i for i in range(w.ndim) if i != axis)) if w.size else 0
            if len(override.scale) <= 1:
                wmin, wmax = np.min(wmin), np.max(wmax)
            params = self.override_params(
                name, override, qtype, axis, (wmin, wmax), self.symmetric_weights
            )
            if params.per_channel and params.scale.size != w.shape[params.axis % w.ndim]:
                raise QuantizationError(
                    f"tensor '{name}': override has {params.scale.size} scales but axis "
                    f"{params.axis} has {w.shape[params.axis % w.ndim]} channels"
                )
            return params
        per_channel = per_channel and w.ndim > 0 and w.size > 0
        try:
            return self.backend.weight_params(
                w, qtype, per_channel, axis, self.symmetric_weights, self.config.reduce_range
            )
        except ValueError as exc:
            raise QuantizationError(f"tensor '{name}': {exc}") from None

    def override_params(
        self,
        name: str,
        ov: TensorOverride,
        qtype: QuantType,
        default_axis: int | None,
        rng: tuple | None,
        symmetric: bool | None = None,
    ) -> QuantParams:
        """Parameters given verbatim by a TensorOverride.

        A scale without a zero point takes the middle of the type's range (0 for signed
        types). Without a scale, the parameters come from the override's rmin/rmax and the
        tensor's range ``rng``, with the override's symmetric / reduce_range.
        """
        symmetric = self.symmetric_activations if symmetric is None else symmetric
        symmetric = symmetric if ov.symmetric is None else ov.symmetric
        qtype = ov.quant_type or qtype
        if not ov.scale:  # computed from the range: the override's sides, else calibrated
            lo = _given(ov.rmin, None if rng is None else float(np.min(rng[0])))
            hi = _given(ov.rmax, None if rng is None else float(np.max(rng[1])))
            if lo is None or hi is None:
                raise QuantizationError(
                    f"tensor '{name}': its override gives no scale and no "
                    f"{'rmin' if lo is None else 'rmax'}, and it has no calibration range"
                )
            try:
                return self.backend.activation_params(
                    min(lo, hi), max(lo, hi), qtype, symmetric, bool(ov.reduce_range)
                )
            except ValueError as exc:
                raise QuantizationError(f"tensor '{name}': invalid override: {exc}") from None
        try:
            scale = np.asarray(ov.scale, dtype=F32)
            if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                raise ValueError(f"scale must be finite and positive, got {list(ov.scale)}")
            axis = None
            if scale.size > 1:
                axis = ov.axis if ov.axis is not None else default_axis
                if axis is None:
                    raise ValueError("per-channel scale needs an axis")
            else:
                scale = scale.reshape(())
            if ov.zero_point is not None:
                zp = np.asarray(ov.zero_point, dtype=np.int64).reshape(scale.shape)
            else:  # a scale alone (built in Python; the JSON form pairs them): mid-range
                qmin, qmax = quant_range(qtype)
                mid = 0 if qtype.signed else (qmin + qmax + 1) // 2
                zp = np.full(scale.shape, mid, dtype=np.int64)
            return QuantParams(scale, zp, qtype, axis)
        except ValueError as exc:
            raise QuantizationError(f"tensor '{name}': invalid override: {exc}") from None

    def input_params(self, name: str) -> QuantParams | None:
        """Parameters an input will be quantized with (None: computed at run time)."""
        state = self.edge(name)
        if state is not None:
            return state.params
        return self.activation_params(name) if self.static else None

    def constant_params(self, name: str) -> QuantParams:
        """Per-tensor parameters of a constant used like an activation (activation type)."""
        override = self.config.tensor_overrides.get(name)
        w = self.constant(name).astype(F32)
        rng = (w.min(), w.max()) if w.size else (0.0, 0.0)
        if override is not None:
            return self.override_params(name, override, self.config.activation_type, None, rng)
        try:
            return self.backend.activation_params(
                float(rng[0]),
                float(rng[1]),
                self.config.activation_type,
                self.symmetric_activations,
                False,
            )
        except ValueError as exc:
            raise QuantizationError(f"tensor '{name}': {exc}") from None

    # ---- emission ------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return self.names.fresh(base)

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(array), name))
        self.types[name] = helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)
        self.initializers[name] = self.new_initializers[-1]
        return name

    def add_node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str],
        base: str | None = None,
        domain: str = "",
        attributes: list[onnx.AttributeProto] | None = None,
        inserted: bool = True,
        name: str | None = None,
        **attrs,
    ) -> onnx.NodeProto:
        """Append a node. ``name`` is used verbatim (a rewritten node keeps its name);
        otherwise a fresh name is derived from ``base``."""
        name = name or self.fresh(base or f"{outputs[0]}_{op_type}")
        node = helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs)
        if attributes:
            node.attribute.extend(attributes)
        if domain == MS_DOMAIN:
            self.uses_ms_domain = True
        self.nodes.append(node)
        if inserted:
            self.inserted.add(name)
        return node

    def params_initializers(self, base: str, params: QuantParams) -> tuple[str, str]:
        """Scale (float32) and zero-point initializers for ``params``."""
        scale = self.add_initializer(f"{base}_scale", params.scale)
        zp = self.add_initializer(f"{base}_zero_point", params.zero_point)
        return scale, zp

    # ---- edges ---------------------------------------------------------------------
    def edge(self, name: str) -> EdgeState | None:
        return self.states.get(name)

    def declare_quantized(
        self,
        float_name: str,
        q_name: str,
        params: QuantParams,
        scale_name: str | None = None,
        zp_name: str | None = None,
        float_available: bool = False,
    ) -> EdgeState:
        """Record that ``float_name`` now exists as ``q_name`` with ``params``."""
        if scale_name is None or zp_name is None:
            scale_name, zp_name = self.params_initializers(float_name, params)
        state = EdgeState(
            float_name, q_name, scale_name, zp_name, params.qtype, params, float_available
        )
        self.states.set(state)
        self.types[q_name] = params.qtype.onnx_type
        return state

    def quantized_activation(self, name: str, params: QuantParams | None = None) -> EdgeState:
        """The quantized form of an activation, inserting a QuantizeLinear (static) or a
        DynamicQuantizeLinear (dynamic) the first time a float edge is requested."""
        state = self.edge(name)
        if state is not None:
            return state
        if not self.static:
            q = self.fresh(f"{name}_quantized")
            s = self.fresh(f"{name}_scale")
            z = self.fresh(f"{name}_zero_point")
            self.add_node("DynamicQuantizeLinear", [name], [q, s, z])
            state = EdgeState(name, q, s, z, QuantType.QUInt8, None, True)
            self.states.set(state)
            return state
        params = params or self.activation_params(name)
        q = self.fresh(f"{name}_quantized")
        state = self.declare_quantized(name, q, params, float_available=True)
        extra = {"axis": params.axis} if params.per_channel else {}
        self.add_node("QuantizeLinear", [name, state.scale_name, state.zp_name], [q], **extra)
        return state

    def quantized_constant(self, name: str, params: QuantParams) -> EdgeState:
        """A constant stored quantized (shared when several nodes use it with equal params)."""
        key = (name, params.key())
        if key in self.states.constants:
            return self.states.constants[key]
        values = self.backend.quantize_weight(self.constant(name), params)
        q = self.add_initializer(f"{name}_quantized", values)
        s, z = self.params_initializers(name, params)
        state = EdgeState(name, q, s, z, params.qtype, params, True)
        self.states.constants[key] = state
        return state

    def quantized_array(self, base: str, array: np.ndarray, params: QuantParams) -> EdgeState:
        """A derived constant (e.g. transposed weights) stored quantized under a new name."""
        q = self.add_initializer(f"{base}_quantized", self.backend.quantize_weight(array, params))
        s, z = self.params_initializers(base, params)
        return EdgeState(base, q, s, z, params.qtype, params, True)

    def quantized_bias(self, bias_name: str, x_params: QuantParams, wp: QuantParams):
        """The backend's int32 bias for ``bias_name`` (QuantizedBias, with the weight
        parameters it needs: the overflow guard may enlarge them)."""
        try:
            qbias = self.backend.quantize_bias(
                self.constant(bias_name).reshape(-1), x_params.scale, wp, name=bias_name
            )
        except ValueError as exc:
            raise QuantizationError(f"tensor '{bias_name}': {exc}") from None
        if qbias.adjusted:
            self.enlarged_biases.append(bias_name)
        return qbias

    def bias_dequantized(self, name: str, values: np.ndarray, scale: np.ndarray, axis: int) -> str:
        """An int32 bias initializer with a DequantizeLinear (scale s_x*s_w, zero point 0)."""
        scale = np.asarray(scale, dtype=F32)
        q = self.add_initializer(f"{name}_quantized", values.astype(np.int32))
        s = self.add_initializer(f"{name}_scale", scale)
        z = self.add_initializer(f"{name}_zero_point", np.zeros(scale.shape, np.int32))
        out = self.fresh(f"{name}_dequantized")
        extra = {"axis": axis} if scale.ndim else {}
        self.add_node("DequantizeLinear", [q, s, z], [out], **extra)
        self.types[out] = TensorProto.FLOAT
        return out

    def dequantized(self, state: EdgeState) -> str:
        """A float tensor holding DequantizeLinear(state) (one DQ per edge).

        When the original float tensor is gone, the DequantizeLinear restores its name.
        """
        key = state.float_name if not state.float_available else state.q_name
        cached = self.states.dequantized.get(key)
        if cached is not None:
            return cached
        if state.float_available:
            out = self.fresh(f"{state.float_name}_dequantized")
        else:
            out = state.float_name
        extra = {}
        if state.params is not None and state.params.per_channel:
            extra["axis"] = state.params.axis
        self.add_node(
            "DequantizeLinear", [state.q_name, state.scale_name, state.zp_name], [out], **extra
        )
        self.types[out] = TensorProto.FLOAT
        self.states.dequantized[key] = out
        return out

    def float_input(self, name: str) -> str:
        """The name a float consumer reads for ``name`` (adds a DQ if the float is gone)."""
        state = self.edge(name)
        if state is None or state.float_available:
            return name
        return self.dequantized(state)

    def emit_float(self, node: onnx.NodeProto) -> None:
        """Keep ``node`` as it is; its quantized-only inputs get DequantizeLinear."""
        for name in list(node.input) + sorted(subgraph_inputs(node)):
            if name:
                self.float_input(name)
        self.nodes.append(node)

    def alias_quantized(self, float_name: str, source: EdgeState) -> EdgeState:
        """Declare ``float_name`` equal to an existing quantized tensor (no node)."""
        state = EdgeState(
            float_name,
            source.q_name,
            source.scale_name,
            source.zp_name,
            source.qtype,
            source.params,
            False,
        )
        self.states.set(state)
        return state

    def emit_qdq(
        self,
        node: onnx.NodeProto,
        inputs: list[str],
        out_params: list[QuantParams | None],
        op_type: str | None = None,
        attributes: list[onnx.AttributeProto] | None = None,
    ) -> None:
        """Emit a QDQ-form op: ``node``'s op (or ``op_type``) on float ``inputs``; each
        output with parameters gets a fresh float name and a QuantizeLinear, and its
        edge is declared quantized (outputs with None stay float under their name)."""
        if node.op_type in self.float_output_ops:  # QDQ option: DQ -> op, output float
            out_params = [None] * len(out_params)
        outs = []
        for out, params in zip(node.output, out_params, strict=False):
            outs.append(self.fresh(f"{out}_float") if params is not None and out else out)
        attrs = list(node.attribute) if attributes is None else attributes
        self.add_node(
            op_type or node.op_type,
            inputs,
            outs,
            name=node.name,
            domain=node.domain if op_type is None else "",
            attributes=attrs,
            inserted=False,
        )
        for out, raw, params in zip(node.output, outs, out_params, strict=False):
            if params is None or not out:
                continue
            self.types[raw] = TensorProto.FLOAT
            q = self.fresh(f"{out}_quantized")
            state = self.declare_quantized(out, q, params)
            extra = {"axis": params.axis} if params.per_channel else {}
            self.add_node("QuantizeLinear", [raw, state.scale_name, state.zp_name], [q], **extra)


def _scalar(v) -> float:
    """A range bound as a Python float (accepts numpy scalars and 1-element arrays)."""
    return float(np.asarray(v, dtype=np.float64).reshape(-1)[0])


def _given(value, default):
    """``value`` unless it is None, else ``default``."""
    return default if value is None else value


def _pick(*choices):
    """The first choice that is not None."""
    for c in choices:
        if c is not None:
            return bool(c)
    return False
