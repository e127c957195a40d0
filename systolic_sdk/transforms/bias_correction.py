"""Empirical bias correction (Nagel et al., 2019, section 4.2) as an fp32 graph pass.

Quantizing a weight ``W`` to ``Q(W) = W + dW`` shifts the expected output of its layer by
``dW . E[x]`` per output channel. This pass measures ``E[x]`` on calibration data and
folds the shift into the bias, so that after quantization the expected output of every
Conv/Gemm/MatMul matches the fp32 model's. The weights are left in fp32; the quantizer
that runs next must quantize them with the same function as ``quantize_weight``.

The expectation is kept per input position (a running sum of the input over the
samples, shape [C, H, W] for a conv), and the shift is the spatial mean of
``conv(E[x], dW)`` computed with the layer's own attributes: this is ``dW . E[x]`` summed
over the kernel taps at interior pixels, and also exact at the borders (padding).

``sequential=True`` (the default, the paper's empirical variant) corrects the layers in
waves along the graph: a layer's correction is measured in a model whose earlier layers
already carry quantized weights and corrected biases, and it is chosen so that
``E[Q(W) x~ + b~] = E[W x + b]``; it thus also removes mean shifts that quantization of
earlier layers propagated through non-linearities. ``sequential=False`` measures every
``E[x]`` once on the fp32 model and subtracts ``dW . E[x]`` (one pass over the data).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator.datapath import F32, dequantize_linear, rne, saturate
from systolic_sdk.backends.systolic.params import weight_scale
from systolic_sdk.calibration.reader import ArrayReader, CalibrationDataReader, replayable
from systolic_sdk.calibration.session import required_inputs
from systolic_sdk.errors import SdkError
from systolic_sdk.transforms._graph import (
    GraphIndex,
    LinearLayer,
    attr,
    linear_layer,
    node_label,
    probe_session,
    require_float_model,
    set_attr,
)

WeightQuantizer = Callable[[np.ndarray, str], np.ndarray]
CalibrationData = CalibrationDataReader | Mapping[str, np.ndarray] | np.ndarray


def fake_quantize_per_tensor(w: np.ndarray, name: str = "") -> np.ndarray:
    """Q(W) for the Systolic weights (spec section 7): per tensor, symmetric int8.

    ``scale = 2 max|w| / 254`` in float64, ``q = sat8(rne(w / scale))`` in float64,
    dequantized as ``f32(q * f32(scale))``. A zero tensor stays zero.
    """
    w64 = np.asarray(w, dtype=np.float64)
    m = float(np.max(np.abs(w64))) if w64.size else 0.0
    if m == 0.0:
        return np.zeros(w64.shape, dtype=F32)
    scale = weight_scale(m)
    q = saturate(rne(w64 / scale), np.int8)
    return dequantize_linear(q, F32(scale))


def fake_quantize_per_channel(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-channel analogue of ``fake_quantize_per_tensor`` (one scale per index of ``axis``)."""
    w64 = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    m = np.abs(w64.reshape(w64.shape[0], -1)).max(axis=1)
    scale = np.where(m > 0, weight_scale(m), 1.0)
    q = saturate(rne(w64 / scale.reshape((-1,) + (1,) * (w64.ndim - 1))), np.int8)
    deq = dequantize_linear(q, scale.astype(F32), 0, axis=0)
    return np.moveaxis(deq, 0, axis)


def correct_bias(
    model: onnx.ModelProto,
    reader_or_arrays: CalibrationData,
    quantize_weight: WeightQuantizer | None = None,
    *,
    sequential: bool = True,
    batch_size: int = 8,
    activation_scales: Mapping[str, float] | None = None,
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose Conv/Gemm/MatMul biases absorb weight-quantization bias.

    ``reader_or_arrays``: a CalibrationDataReader (re-read through ``rewind()`` when it has
    one, else its feeds are kept in memory), a dict ``{input_name: array[N, ...]}``, or one
    array for a single-input model (fed ``batch_size`` samples at a time).
    ``quantize_weight(w, name)`` returns the fake-quantized weight (float32, same shape);
    the default is ``fake_quantize_per_tensor``. A layer without a bias gets one (Conv:
    input B; Gemm: input C with beta 1; MatMul: an Add after it). Activations are read
    with onnxruntime and only running sums are kept.

    ``activation_scales`` (sequential only): ``{tensor: int8 scale}`` of the activations
    the deployed graph quantizes (symmetric, zero point 0). The model in which each wave
    is measured then also fake-quantizes those tensors (QuantizeLinear/DequantizeLinear),
    so the correction also absorbs the mean shift that activation rounding and clipping
    cause; without it only weights are quantized there.
    """
    require_float_model(model, "correct_bias")
    qw = quantize_weight or fake_quantize_per_tensor
    feeds = _FeedSource(model, reader_or_arrays, batch_size)
    result = copy.deepcopy(model)
    index = GraphIndex(result)
    layers = [la for la in map(lambda n: linear_layer(index, n), result.graph.node) if la]
    if not layers:
        return result
    fp_weights = {la.weight: numpy_helper.to_array(index.inits[la.weight]) for la in layers}
    q_weights = {name: _checked_quant(qw, w, name) for name, w in fp_weights.items()}
    for la in layers:
        _ensure_bias(index, la)

    fp_means = _input_means(result, layers, feeds)
    if activation_scales and not sequential:
        raise SdkError("correct_bias: activation_scales needs sequential=True")
    if not sequential:
        for la in layers:
            shift = _expected_output(la, fp_means[la.node.output[0]], q_weights[la.weight])
            shift -= _expected_output(la, fp_means[la.node.output[0]], fp_weights[la.weight])
            _subtract_from_bias(index, la, shift)
        return result

    working = copy.deepcopy(result)  # same names; corrected layers get quantized weights
    rename = _fake_quantize_activations(working, activation_scales or {})
    windex = GraphIndex(working)
    waves = _waves(result, {la.node.output[0] for la in layers})
    for wave in range(max(waves.values()) + 1):
        members = [la for la in layers if waves[la.node.output[0]] == wave]
        if wave == 0 and not rename:
            q_means = fp_means
        else:
            q_means = _input_means(working, members, feeds, rename)
        for la in members:
            key = la.node.output[0]
            shift = _expected_output(la, q_means[key], q_weights[la.weight])
            shift -= _expected_output(la, fp_means[key], fp_weights[la.weight])
            _subtract_from_bias(index, la, shift)
            windex.set_init(la.bias, numpy_helper.to_array(index.inits[la.bias]))
            windex.set_init(la.weight, q_weights[la.weight])
    return result


def _checked_quant(qw: WeightQuantizer, w: np.ndarray, name: str) -> np.ndarray:
    q = np.asarray(qw(w, name))
    if q.shape != w.shape:
        raise SdkError(f"correct_bias: quantize_weight changed the shape of '{name}'")
    return q.astype(F32)


class _FeedSource:
    """Re-iterable feed dicts from a reader, a dict of arrays or one array; ``reader`` is
    the re-readable reader behind them. Errors name the caller ``who``."""

    def __init__(
        self,
        model: onnx.ModelProto,
        data: CalibrationData,
        batch_size: int,
        who: str = "correct_bias",
    ) -> None:
        inputs = [vi.name for vi in required_inputs(model)]
        if isinstance(data, np.ndarray):
            if len(inputs) != 1:
                raise SdkError(f"{who}: the model has {len(inputs)} inputs; pass a dict of arrays")
            data = {inputs[0]: data}
        if isinstance(data, Mapping):
            missing = [n for n in inputs if n not in data]
            if missing:
                raise SdkError(f"{who}: no calibration data for input '{missing[0]}'")
            self.reader: CalibrationDataReader = ArrayReader(dict(data), batch_size)
        elif isinstance(data, CalibrationDataReader) or hasattr(data, "get_next"):
            self.reader = replayable(data)
        else:
            raise SdkError(
                f"{who}: calibration data must be a CalibrationDataReader, "
                f"a dict of arrays or an array, not {type(data).__name__}"
            )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.reader.rewind()  # type: ignore[attr-defined]
        return _drain(self.reader)


def _drain(reader: CalibrationDataReader) -> Iterator[dict[str, np.ndarray]]:
    while (feed := reader.get_next()) is not None:
        yield feed


class _Mean:
    """Running sum of a layer input over samples: per position for convs, per feature else."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, x: np.ndarray, conv: bool, name: str) -> None:
        x = np.asarray(x, dtype=np.float64)
        part = x.sum(axis=0) if conv else x.reshape(-1, x.shape[-1]).sum(axis=0)
        n = x.shape[0] if conv else int(np.prod(x.shape[:-1]))
        if self.total is None:
            self.total = part
        elif self.total.shape != part.shape:
            raise SdkError(f"correct_bias: tensor '{name}' changes shape between samples")
        else:
            self.total += part
        self.count += n

    def value(self, name: str) -> np.ndarray:
        if self.total is None or self.count == 0:
            raise SdkError("correct_bias: the calibration data is empty")
        return self.total / self.count


def _fake_quantize_activations(model: onnx.ModelProto, scales: Mapping[str, float]) -> dict:
    """Insert int8 Q/DQ (zero point 0) after each named tensor; returns {tensor: dq output}."""
    index = GraphIndex(model)
    known = set(index.producer) | {i.name for i in model.graph.input}
    rename: dict[str, str] = {}
    for name in scales:
        if name not in known:
            raise SdkError(f"correct_bias: activation_scales names '{name}', not a tensor")
    new_nodes: list[onnx.NodeProto] = []

    def qdq(name: str) -> None:
        s_name, z_name = index.unique_name(f"{name}_bc_s"), index.unique_name(f"{name}_bc_z")
        index.set_init(s_name, np.asarray(scales[name], dtype=F32))
        index.set_init(z_name, np.zeros((), np.int8))
        q, dq = index.unique_name(f"{name}_bc_q"), index.unique_name(f"{name}_bc_dq")
        new_nodes.append(helper.make_node("QuantizeLinear", [name, s_name, z_name], [q]))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq]))
        index.producer[dq] = new_nodes[-1]
        rename[name] = dq

    for inp in model.graph.input:
        if inp.name in scales:
            qdq(inp.name)
    for node in model.graph.node:
        for i, n in enumerate(node.input):
            if n in rename:
                node.input[i] = rename[n]
        new_nodes.append(node)
        for out in node.output:
            if out in scales:
                qdq(out)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return rename


def _input_means(
    model: onnx.ModelProto,
    layers: list[LinearLayer],
    feeds: Iterable[dict[str, np.ndarray]],
    rename: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """E[x] of each layer's data input (keyed by the layer's output name), one streaming pass.

    ``rename``: where a layer reads a fake-quantized copy of its input instead.
    """
    rename = rename or {}
    wanted = list(dict.fromkeys(rename.get(la.node.input[0], la.node.input[0]) for la in layers))
    sess = probe_session(model, wanted, "correct_bias")
    is_conv = {rename.get(la.node.input[0], la.node.input[0]): la.op == "Conv" for la in layers}
    means = {name: _Mean() for name in wanted}
    input_names = {i.name for i in sess.get_inputs()}
    for feed in feeds:
        values = sess.run(wanted, {k: v for k, v in feed.items() if k in input_names})
        for name, value in zip(wanted, values, strict=True):
            means[name].add(value, is_conv[name], name)
    src = {la.node.output[0]: rename.get(la.node.input[0], la.node.input[0]) for la in layers}
    return {key: means[name].value(name) for key, name in src.items()}


def _expected_output(layer: LinearLayer, mean_x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over output positions of ``layer(E[x])`` without bias."""
    node = layer.node
    if layer.op == "Conv":
        x = mean_x.astype(F32)[None]
        conv = helper.make_node(
            "Conv",
            ["x", "w"],
            ["y"],
            **{a.name: helper.get_attribute_value(a) for a in node.attribute},
        )
        graph = helper.make_graph(
            [conv],
            "expected_output",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.asarray(w, dtype=F32), "w")],
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        y = sess.run(None, {"x": x})[0][0]
        return y.reshape(y.shape[0], -1).astype(np.float64).mean(axis=1)
    w64 = np.asarray(w, dtype=np.float64)
    if layer.op == "Gemm":
        if attr(node, "transB", 0):
            w64 = w64.T
        return float(attr(node, "alpha", 1.0)) * (mean_x @ w64)
    return mean_x @ w64


def _ensure_bias(index: GraphIndex, layer: LinearLayer) -> None:
    """Give the layer its own float bias initializer (zeros when it had none)."""
    node = layer.node
    w = index.inits[layer.weight]
    n_out = int(w.dims[layer.out_axis])
    if layer.op == "MatMul":
        out = node.output[0]
        mid = index.unique_name(f"{out}_nobias")
        bias = index.unique_name(f"{node.name or out}_bias")
        index.set_init(bias, np.zeros(n_out, dtype=F32))
        node.output[0] = mid
        nodes = index.model.graph.node
        pos = list(nodes).index(node)
        add = helper.make_node("Add", [mid, bias], [out], name=f"{node.name or out}_bias_add")
        nodes.insert(pos + 1, add)
        index.producer[mid] = node
        index.producer[out] = add
        layer.bias = bias
        return
    if layer.op == "Gemm" and layer.bias is not None and float(attr(node, "beta", 1.0)) == 0.0:
        layer.bias = None  # beta 0: C is ignored, replace it
    if layer.bias is None:
        name = index.unique_name(f"{node.name or node.output[0]}_bias")
        index.set_init(name, np.zeros(n_out, dtype=F32))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        if layer.op == "Gemm":
            set_attr(node, "beta", 1.0)
        layer.bias = name
        return
    value = numpy_helper.to_array(index.inits[layer.bias])
    if value.dtype != np.float32:
        raise SdkError(f"correct_bias: bias '{layer.bias}' of {node_label(node)} is not float32")
    shape = np.broadcast_shapes(value.shape, (n_out,)) if layer.op == "Gemm" else value.shape
    if index.n_uses(layer.bias) > 1 or shape != value.shape:
        name = index.unique_name(f"{layer.bias}_{node.name or node.output[0]}")
        index.set_init(name, np.broadcast_to(value, shape).astype(F32))
        node.input[2] = name
        layer.bias = name


def _subtract_from_bias(index: GraphIndex, layer: LinearLayer, shift: np.ndarray) -> None:
    """bias -= shift (Gemm: divided by beta, since the bias enters as beta * C)."""
    bias = numpy_helper.to_array(index.inits[layer.bias]).astype(np.float64)
    if layer.op == "Gemm":
        shift = shift / float(attr(layer.node, "beta", 1.0))
    index.set_init(layer.bias, (bias - shift).astype(F32))


def _waves(model: onnx.ModelProto, targets: set[str]) -> dict[str, int]:
    """For each target layer (by output name), how many target layers precede it on a path."""
    level: dict[str, int] = {}
    waves: dict[str, int] = {}
    for node in model.graph.node:
        ins = [level.get(n, 0) for n in node.input if n]
        lev = max(ins, default=0)
        key = node.output[0] if node.output else ""
        if key in targets:
            waves[key] = lev
            lev += 1
        for out in node.output:
            level[out] = lev
    return waves
