"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.1) as an fp32 graph pass.

For two layers joined by a positively homogeneous path, ``y = W2 f(W1 x + b1)`` with
``f(x / s) = f(x) / s`` per channel for ``s > 0`` (Relu, LeakyRelu, max/average pooling,
Flatten, nothing at all), output channel ``i`` of layer 1 is divided by ``s_i`` and
input channel ``i`` of layer 2 multiplied by it::

    W1'[i] = W1[i] / s_i,  b1'[i] = b1[i] / s_i,  W2'[:, i] = W2[:, i] * s_i,
    s_i = sqrt(r1_i * r2_i) / r2_i = sqrt(r1_i / r2_i)

where ``r`` is the per-channel weight range (max |w|, the symmetric per-tensor int8 range
of the Systolic weights, spec section 7). Both channels then have range ``sqrt(r1 r2)``,
which balances per-channel ranges inside each weight tensor, so one per-tensor scale
fits all channels. Chains that share a layer (a depthwise conv between a 1x1 expansion
and a 1x1 projection) are swept repeatedly until the scales stop changing.

ReLU6 (``Clip(0, 6)``) is not scale equivariant: ``clip(z / s, 0, 6) != clip(z, 0, 6) / s``
unless ``s == 1``. The exact equivalent is a per-channel upper bound ``6 / s_i``, which a
per-tensor int8 datapath cannot express (there the clip is the int8 saturation at scale
6/127). ``relu6`` chooses what to do (see ``Relu6Mode``); every mode other than "exact"
and "skip" changes the fp32 function only where the original pre-activation exceeded its
clip bound (an output that ReLU6 had saturated), and "keep" also where it lay between the
old and the new bound.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from systolic_sdk.errors import SdkError
from systolic_sdk.transforms._graph import (
    GraphIndex,
    LinearLayer,
    attr,
    linear_layer,
    require_float_model,
)

Relu6Mode = Literal["max", "relu", "keep", "exact", "skip"]
"""How a ``Clip(0, hi)`` between two equalized layers is rewritten (cumulative scales ``S``):

- ``"max"``: ``Clip(0, max_i hi / S_i)``, one scalar bound, the loosest channel's exact
  bound. Channels whose own bound ``hi / S_i`` is lower are no longer clipped at it: an
  output differs from the original only where the original pre-activation exceeded ``hi``.
- ``"relu"``: ``Relu`` (the paper's choice): outputs differ where the original exceeded
  ``hi`` (they are no longer bounded at all).
- ``"keep"``: ``Clip(0, hi)`` unchanged: outputs differ where the original pre-activation
  exceeded ``min(hi, hi * S_i)``, which includes unsaturated values of channels with
  ``S_i < 1``.
- ``"exact"``: ``Relu`` then ``Min`` with the per-channel bound ``hi / S`` (a constant of
  shape [C, 1, 1]): equal to the original in fp32, but not a per-tensor int8 op.
- ``"skip"``: chains through a bounded Clip are not equalized (exact, no gain there).
"""

# Ops f with f(x * s) = f(x) * s per channel for s > 0 (channel axis 1, NCHW).
_SPATIAL_HOMOGENEOUS = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
}
_ANY_LAYOUT_HOMOGENEOUS = {"Relu", "LeakyRelu", "Identity"}
_RELU6_MODES = ("max", "relu", "keep", "exact", "skip")


@dataclass
class _Clip:
    node: onnx.NodeProto
    hi: float  # upper bound (inf when absent)
    block: int  # features per channel at the clip (after a Flatten), else 1
    rank: int | None  # rank of the clipped tensor when known
    layout: str  # "nchw": channels on axis 1; "last": channels on the last axis


@dataclass
class _Chain:
    first: LinearLayer
    second: LinearLayer
    channels: int
    block: int  # layer-2 input features per layer-1 channel (Flatten of C x H x W)
    clips: list[_Clip] = field(default_factory=list)
    scale: np.ndarray | None = None  # cumulative s applied so far (float64, [channels])


def equalize(
    model: onnx.ModelProto,
    *,
    iterations: int = 100,
    tolerance: float = 1e-6,
    relu6: Relu6Mode = "exact",
    min_range: float = 1e-2,
) -> onnx.ModelProto:
    """Return a copy of ``model`` with cross-layer equalization applied to every chain.

    A chain is Conv/Gemm/MatMul (constant float weight) -> any number of single-consumer
    Relu, LeakyRelu, Clip(0, hi), pooling, Identity or Flatten(axis=1) nodes -> a
    Conv/Gemm/MatMul reading that tensor as its data input (grouped and depthwise convs
    included). Sweeps over all chains stop after ``iterations`` sweeps or when every scale
    of a sweep is within ``tolerance`` of 1 (relative). ``relu6`` says how bounded Clips on
    a chain are rewritten (see ``Relu6Mode``; the default "exact" keeps the fp32 function).
    A channel whose weight range is below ``min_range`` times the largest of its tensor (in
    either layer: a near-dead channel, typically from BatchNorm folding) is left unscaled:
    equalizing it would divide its bias, often its whole output, by a tiny ``s`` and
    inflate the activation range of the tensor for nothing. The input model is not
    modified.
    """
    require_float_model(model, "equalize")
    if relu6 not in _RELU6_MODES:
        raise SdkError(f"equalize: relu6 must be one of {', '.join(_RELU6_MODES)}, not '{relu6}'")
    if iterations < 1:
        raise SdkError(f"equalize: iterations must be >= 1, not {iterations}")
    out = copy.deepcopy(model)
    index = GraphIndex(out)
    shapes = _inferred_shapes(out)
    chains = find_chains(index, shapes)
    if relu6 == "skip":
        chains = [c for c in chains if all(math.isinf(k.hi) for k in c.clips)]
    if not chains:
        return out

    weights: dict[str, np.ndarray] = {}
    for chain in chains:
        for layer in (chain.first, chain.second):
            for name in (layer.weight, layer.bias):
                if name and name not in weights:
                    weights[name] = numpy_helper.to_array(index.inits[name]).astype(np.float64)
        chain.scale = np.ones(chain.channels)

    for _ in range(iterations):
        worst = 0.0
        for chain in chains:
            s = _step(chain, weights, min_range)
            chain.scale *= s
            worst = max(worst, float(np.max(np.abs(s - 1.0))))
        if worst <= tolerance:
            break

    for name, value in weights.items():
        index.set_init(name, value.astype(np.float32))
    replaced: set[str] = set()
    for chain in chains:
        for clip in chain.clips:
            if not math.isinf(clip.hi):
                replaced.update(n for n in clip.node.input[1:] if n)
                _rewrite_clip(index, clip, chain.scale, relu6)
    _drop_unused_initializers(out, replaced)
    return out


def _drop_unused_initializers(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove those of ``names`` (former Clip bounds) that no node or output reads any more."""
    graph = model.graph
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    used |= {i.name for i in graph.input}  # an initializer listed as an input stays
    dead = names - used
    kept = [t for t in graph.initializer if t.name not in dead]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def find_chains(index: GraphIndex, shapes: dict[str, list[int | None]]) -> list[_Chain]:
    """Every equalizable layer pair of the graph, in graph order."""
    chains: list[_Chain] = []
    for node in index.model.graph.node:
        first = linear_layer(index, node)
        if first is None or not _owned(index, first) or not _bias_per_channel(index, first):
            continue
        chain = _follow(index, shapes, first)
        if chain is not None:
            chains.append(chain)
    return chains


def _owned(index: GraphIndex, layer: LinearLayer) -> bool:
    """True when the layer's weight and bias are read by this node only."""
    return index.n_uses(layer.weight) == 1 and (layer.bias is None or index.n_uses(layer.bias) == 1)


def _bias_per_channel(index: GraphIndex, layer: LinearLayer) -> bool:
    """True when the bias (if any) is per output channel or a broadcast scalar."""
    if layer.bias is None:
        return True
    dims = list(index.inits[layer.bias].dims)
    if layer.op == "Conv":
        return len(dims) == 1
    n_out = index.inits[layer.weight].dims[layer.out_axis]
    return int(np.prod(dims)) in (1, n_out) and (not dims or dims[-1] in (1, n_out))


def _follow(
    index: GraphIndex, shapes: dict[str, list[int | None]], first: LinearLayer
) -> _Chain | None:
    """Walk from ``first``'s output through homogeneous ops to the next linear layer."""
    w1 = index.inits[first.weight].dims
    channels = int(w1[first.out_axis])
    layout = "nchw" if first.op == "Conv" else "last"
    block = 1
    clips: list[_Clip] = []
    cur = first.node.output[0]
    while True:
        nxt = index.sole_consumer(cur)
        if nxt is None or nxt.input[0] != cur:
            return None
        op = nxt.op_type
        second = linear_layer(index, nxt)
        if second is not None:
            if not _owned(index, second) or not _fits(index, second, layout, channels * block):
                return None
            return _Chain(first, second, channels, block, clips)
        if any(o for o in nxt.output[1:] if index.n_uses(o)):
            return None  # e.g. MaxPool indices
        if op in _ANY_LAYOUT_HOMOGENEOUS or (op in _SPATIAL_HOMOGENEOUS and layout == "nchw"):
            pass
        elif op == "Clip":
            bounds = _clip_bounds(index, nxt)
            if bounds is None or bounds[0] != 0.0 or not bounds[1] > 0.0:
                return None
            shape = shapes.get(cur)
            clips.append(_Clip(nxt, bounds[1], block, len(shape) if shape else None, layout))
        elif op == "Flatten" and attr(nxt, "axis", 1) == 1:
            shape = shapes.get(cur)
            if shape is None:
                return None
            if layout == "nchw":
                spatial = shape[2:]
                if any(d is None for d in spatial):
                    return None
                block *= int(np.prod(spatial, dtype=np.int64))
                layout = "last"
            elif len(shape) != 2:
                return None
        else:
            return None
        cur = nxt.output[0]


def _fits(index: GraphIndex, second: LinearLayer, layout: str, features: int) -> bool:
    """True when ``second`` reads ``features`` channels laid out as ``layout``."""
    dims = index.inits[second.weight].dims
    if second.op == "Conv":
        return layout == "nchw" and int(dims[1]) * second.group == features
    k_axis = 1 - second.out_axis
    return layout == "last" and int(dims[k_axis]) == features


def _clip_bounds(index: GraphIndex, node: onnx.NodeProto) -> tuple[float, float] | None:
    """(lo, hi) of a Clip with constant bounds (absent bounds are -inf / inf)."""
    lo, hi = -math.inf, math.inf
    if any(a.name in ("min", "max") for a in node.attribute):  # opset < 11
        lo = float(attr(node, "min", lo))
        hi = float(attr(node, "max", hi))
        return lo, hi
    for pos in (1, 2):
        if len(node.input) > pos and node.input[pos]:
            value = index.constant(node.input[pos])
            if value is None or value.size != 1:
                return None
            if pos == 1:
                lo = float(value.reshape(()))
            else:
                hi = float(value.reshape(()))
    return lo, hi


def out_ranges(layer: LinearLayer, w: np.ndarray) -> np.ndarray:
    """max |w| per output channel."""
    return np.abs(layer.out_view(w)).max(axis=1)


def in_ranges(layer: LinearLayer, w: np.ndarray, block: int = 1) -> np.ndarray:
    """max |w| per input channel (a channel spans ``block`` consecutive Gemm/MatMul rows)."""
    if layer.op == "Conv":
        g = layer.group
        view = np.abs(w).reshape(g, w.shape[0] // g, w.shape[1], -1)
        return view.max(axis=(1, 3)).reshape(-1)
    k_axis = 1 - layer.out_axis
    per_feature = np.abs(w).max(axis=1 - k_axis)
    return per_feature.reshape(-1, block).max(axis=1)


def _scale_in(layer: LinearLayer, w: np.ndarray, s: np.ndarray, block: int) -> np.ndarray:
    """Multiply input channel i of the weight by s_i."""
    if layer.op == "Conv":
        g = layer.group
        view = w.reshape(g, w.shape[0] // g, w.shape[1], -1)
        return (view * s.reshape(g, 1, w.shape[1], 1)).reshape(w.shape)
    per_feature = np.repeat(s, block)
    k_axis = 1 - layer.out_axis
    return w * (per_feature[:, None] if k_axis == 0 else per_feature[None, :])


def _scale_out(layer: LinearLayer, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Divide output channel i of the weight by s_i."""
    shape = [1] * w.ndim
    shape[layer.out_axis] = s.size
    return w / s.reshape(shape)


def equalization_scales(r1: np.ndarray, r2: np.ndarray, min_range: float = 0.0) -> np.ndarray:
    """Nagel's ``s_i = sqrt(r1_i * r2_i) / r2_i``; 1 where a range is 0 or below
    ``min_range`` times its tensor's largest."""
    ok = np.isfinite(r1) & np.isfinite(r2) & (r1 > 0) & (r2 > 0)
    ok &= (r1 >= min_range * r1.max(initial=0.0)) & (r2 >= min_range * r2.max(initial=0.0))
    s = np.ones_like(r1, dtype=np.float64)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    return s


def _step(chain: _Chain, weights: dict[str, np.ndarray], min_range: float) -> np.ndarray:
    """One equalization of one chain; returns the scales it applied."""
    a, b = chain.first, chain.second
    r1 = out_ranges(a, weights[a.weight])
    r2 = in_ranges(b, weights[b.weight], chain.block)
    s = equalization_scales(r1, r2, min_range)
    weights[a.weight] = _scale_out(a, weights[a.weight], s)
    if a.bias is not None:
        bias = weights[a.bias]
        if bias.size == 1:  # a broadcast Gemm bias becomes per channel
            bias = np.full(s.size, bias.reshape(()), dtype=np.float64)
        weights[a.bias] = (bias.reshape(-1) / s).reshape(bias.shape if bias.size > 1 else (-1,))
    weights[b.weight] = _scale_in(b, weights[b.weight], s, chain.block)
    return s


def _rewrite_clip(index: GraphIndex, clip: _Clip, scale: np.ndarray, mode: str) -> None:
    """Rewrite one bounded Clip after its channels were divided by ``scale``."""
    node = clip.node
    bound = np.repeat(clip.hi / scale, clip.block).astype(np.float32)
    if mode == "keep":
        return
    if mode == "max":
        new_hi = np.float32(bound.max())
        if any(a.name == "max" for a in node.attribute):
            for a in node.attribute:
                if a.name == "max":
                    a.f = float(new_hi)
            return
        name = index.unique_name(f"{node.name or node.output[0]}_max")
        index.set_init(name, np.array(new_hi, dtype=index_dtype(index, node)))
        node.input[2] = name
        return
    # "relu" and "exact": the Clip becomes a Relu (exact adds a per-channel Min after it).
    out = node.output[0]
    relu_out = index.unique_name(f"{out}_relu") if mode == "exact" else out
    relu = helper.make_node("Relu", [node.input[0]], [relu_out], name=node.name)
    nodes = index.model.graph.node
    pos = list(nodes).index(node)
    nodes.remove(node)
    nodes.insert(pos, relu)
    if mode == "exact":
        if clip.layout == "last":
            shape = [bound.size]  # channels on the last axis
        elif clip.rank is None:
            raise SdkError(f"equalize: rank of '{out}' unknown, cannot build a per-channel clip")
        else:
            shape = [bound.size] + [1] * (clip.rank - 2)
        bound_name = index.unique_name(f"{out}_bound")
        index.set_init(bound_name, bound.reshape(shape))
        nodes.insert(
            pos + 1,
            helper.make_node("Min", [relu_out, bound_name], [out], name=f"{node.name}_bound"),
        )


def index_dtype(index: GraphIndex, node: onnx.NodeProto) -> np.dtype:
    """The dtype of a Clip's existing max bound (float32 when unknown)."""
    value = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return value.dtype if value is not None else np.dtype(np.float32)


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Tensor name -> shape (None for unknown dims) from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are optional; chains needing them are skipped
        inferred = model
    g = inferred.graph
    shapes: dict[str, list[int | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            ]
    return shapes
