"""Per-tensor int8 weights chosen on calibration data, written back as fp32 grid values.

The Systolic weights are per tensor: ``scale = 2 max|w| / 254`` and ``q = rne(w / scale)``
(spec section 7). This pass chooses, for every Conv/Gemm/MatMul with a constant float
weight, a better integer weight than nearest rounding of the original, and stores
``w' = q * scale`` (float32) in place of the weight, so that the quantizer that runs next
reproduces ``q`` exactly: ``max|w'| = 127 scale`` and ``rne(w' / scale') = q``.

Two choices are made per layer from ``H = E[x x^T]``, the second moment of the layer's
input patches (the im2col rows of a conv; one matrix per group, so per channel for a
depthwise conv), measured with onnxruntime on calibration data:

- the clip threshold ``c`` (``clip="mse"``): ``scale = 2 c / 254`` for the ``c`` among
  ``max|w|`` times ``clip_grid`` that minimizes the expected output error
  ``tr(dW H dW^T)`` of nearest rounding; weights beyond ``c`` saturate to +-127.
- the rounding (``rounding="gptq"``): Frantar et al., 2022 (GPTQ, after Optimal Brain
  Quantization): input columns are rounded one at a time and the rounding error of each
  is compensated on the columns not rounded yet, through the inverse of ``H``. This
  minimizes the same output error greedily; on spatially smooth inputs it keeps, e.g.,
  the sum of each depthwise kernel close to the original.

``H`` is measured on the fp32 model (every layer sees fp32 inputs). The result is not
equal to the input model in fp32: it is the model the int8 weights compute, expressed in
fp32, so a bias correction measured against the original weights can follow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from runtime_emulator.datapath import F32, rne, saturate
from systolic_sdk.backends.systolic.params import weight_scale
from systolic_sdk.errors import SdkError
from systolic_sdk.transforms._graph import (
    GraphIndex,
    LinearLayer,
    attr,
    linear_layer,
    node_label,
    probe_session,
    require_float_model,
)
from systolic_sdk.transforms.bias_correction import CalibrationData, _FeedSource

Rounding = Literal["nearest", "gptq"]
Clip = Literal["max", "mse"]
_BLOCK = 128  # GPTQ columns rounded before the rest is updated at once
DEFAULT_CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(11))  # 1.0, 0.95, ..., 0.5


@dataclass
class _Layer:
    """A linear layer seen as ``groups`` GEMMs: weight [groups, rows, cols] on patches."""

    layer: LinearLayer
    groups: int
    kernel: tuple[int, ...]  # conv kernel shape (empty for Gemm/MatMul)
    hessian: np.ndarray | None = None  # [groups, cols, cols], float64 sum of x x^T
    count: int = 0


def snap_to_grid(q: np.ndarray, scale: float) -> np.ndarray:
    """float32 weights ``q * scale`` that the per-tensor quantizer maps back to ``q``."""
    return (np.asarray(q, dtype=np.float64) * scale).astype(F32)


def round_weights(
    model: onnx.ModelProto,
    data: CalibrationData,
    *,
    rounding: Rounding = "gptq",
    clip: Clip = "max",
    clip_grid: Sequence[float] = DEFAULT_CLIP_GRID,
    damping: float = 0.01,
    act_order: bool = False,
    max_positions: int = 256,
    batch_size: int = 8,
) -> onnx.ModelProto:
    """Return a copy of ``model`` whose Conv/Gemm/MatMul weights lie on their int8 grid.

    ``data``: calibration inputs as ``correct_bias`` takes them. ``rounding`` and ``clip``
    are described in the module docstring; ``rounding="nearest", clip="max"`` reproduces
    what the quantizer would do anyway (a test of the grid). ``damping`` (a fraction of the
    mean diagonal of ``H``) regularizes the inverse; ``act_order`` rounds the columns in
    the order of decreasing input energy (GPTQ's heuristic; index order measured better on
    EfficientNet-Lite0); ``max_positions`` caps the output positions per sample that
    enter ``H`` (a regular subsampling of the image).
    Layers without a usable weight (shared, non-float, 1-D/3-D convs, auto_pad) are left
    as they are.
    """
    require_float_model(model, "round_weights")
    if rounding not in ("nearest", "gptq"):
        raise SdkError(f"round_weights: rounding must be 'nearest' or 'gptq', not '{rounding}'")
    if clip not in ("max", "mse"):
        raise SdkError(f"round_weights: clip must be 'max' or 'mse', not '{clip}'")
    if not clip_grid or any(not 0.0 < float(c) <= 1.0 for c in clip_grid):
        raise SdkError("round_weights: clip_grid values must lie in (0, 1]")
    if damping < 0.0 or max_positions < 1:
        raise SdkError("round_weights: damping must be >= 0 and max_positions >= 1")
    feeds = _FeedSource(model, data, batch_size)
    out = copy.deepcopy(model)
    index = GraphIndex(out)
    layers = _layers(index)
    if not layers:
        return out
    if rounding == "gptq" or clip == "mse":
        _measure(out, layers, feeds, max_positions)
    for la in layers:
        w = numpy_helper.to_array(index.inits[la.layer.weight])
        q = _round_layer(la, w, rounding, clip, clip_grid, damping, act_order)
        index.set_init(la.layer.weight, q)
    return out


def _layers(index: GraphIndex) -> list[_Layer]:
    layers: list[_Layer] = []
    for node in index.model.graph.node:
        la = linear_layer(index, node)
        if la is None or index.n_uses(la.weight) != 1:
            continue
        dims = list(index.inits[la.weight].dims)
        if la.op == "Conv":
            if len(dims) != 4 or attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                continue
            layers.append(_Layer(la, la.group, tuple(dims[2:])))
        else:
            layers.append(_Layer(la, 1, ()))
    return layers


def _as_groups(la: _Layer, w: np.ndarray) -> np.ndarray:
    """The weight as [groups, rows, cols] (cols ordered as the patches)."""
    if la.layer.op == "Conv":
        return w.reshape(la.groups, w.shape[0] // la.groups, -1)
    rows_first = w if la.layer.out_axis == 0 else w.T
    return rows_first[None]


def _from_groups(la: _Layer, g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if la.layer.op == "Conv":
        return g.reshape(shape)
    return g[0] if la.layer.out_axis == 0 else g[0].T


def _patches(la: _Layer, x: np.ndarray, max_positions: int, phase: int) -> np.ndarray:
    """Input patches of a batch as [groups, positions, cols] (float32).

    At most ``max_positions`` output positions per sample: a regular subsampling of the
    output grid (every ``step``-th row and column, starting at ``phase % step``).
    """
    node = la.layer.node
    if la.layer.op != "Conv":
        rows = x.reshape(-1, x.shape[-1])
        return rows[None]
    kh, kw = la.kernel
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    t, left, b, r = attr(node, "pads", [0, 0, 0, 0])
    if (kh, kw, t, left, b, r, la.groups) == (1, 1, 0, 0, 0, 0, 1):  # a 1x1 conv: no im2col
        oh, ow = -(-x.shape[2] // sh), -(-x.shape[3] // sw)
        step = max(1, math.ceil(math.sqrt(oh * ow / max_positions)))
        off = phase % step
        sub = x[:, :, off * sh :: step * sh, off * sw :: step * sw]
        return sub.transpose(0, 2, 3, 1).reshape(1, -1, x.shape[1])
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    step = max(1, math.ceil(math.sqrt(oh * ow / max_positions)))
    off = phase % step
    rows, cols = range(off, oh, step), range(off, ow, step)
    n, c = x.shape[:2]
    g = la.groups
    # one strided slice per kernel tap: [cin_g * kh * kw, ...] in the weight's order
    taps = np.empty((g, c // g, kh * kw, n, len(rows), len(cols)), dtype=F32)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = rows.start * sh + i * dh, cols.start * sw + j * dw
            sl = xp[:, :, r0 :: step * sh, c0 :: step * sw][:, :, : len(rows), : len(cols)]
            taps[:, :, i * kw + j] = sl.transpose(1, 0, 2, 3).reshape(g, c // g, n, *sl.shape[2:])
    p = taps.reshape(g, -1, n * len(rows) * len(cols))
    return p.transpose(0, 2, 1)


def _measure(
    model: onnx.ModelProto,
    layers: list[_Layer],
    feeds: _FeedSource,
    max_positions: int,
) -> None:
    """Accumulate H = sum x x^T over the calibration patches of every layer's input."""
    wanted = list(dict.fromkeys(la.layer.node.input[0] for la in layers))
    sess = probe_session(model, wanted, "round_weights")
    by_input: dict[str, list[_Layer]] = {}
    for la in layers:
        by_input.setdefault(la.layer.node.input[0], []).append(la)
    input_names = {i.name for i in sess.get_inputs()}
    batch = 0
    for feed in feeds:
        values = sess.run(wanted, {k: v for k, v in feed.items() if k in input_names})
        for name, value in zip(wanted, values, strict=True):
            value = np.asarray(value, dtype=F32)
            for la in by_input[name]:
                accumulate_hessian(la, value, max_positions, batch)
        batch += 1
    for la in layers:
        if la.hessian is None or la.count == 0:
            raise SdkError("round_weights: the calibration data is empty")
        la.hessian /= la.count


def accumulate_hessian(la: _Layer, x: np.ndarray, max_positions: int, phase: int) -> None:
    """Add ``x``'s patches to ``la.hessian`` (float64 sum of x x^T) and ``la.count``."""
    p = _patches(la, x, max_positions, phase)
    h = np.matmul(p.transpose(0, 2, 1), p).astype(np.float64)
    la.hessian = h if la.hessian is None else la.hessian + h
    la.count += p.shape[1]


def _output_error(dw: np.ndarray, h: np.ndarray) -> float:
    """sum over groups of tr(dW H dW^T)."""
    return float(np.einsum("grk,gkl,grl->", dw, h, dw, optimize=True))


def _nearest(w: np.ndarray, scale: float) -> np.ndarray:
    return saturate(rne(w / scale), np.int8).astype(np.float64)


def _round_layer(
    la: _Layer,
    w: np.ndarray,
    rounding: Rounding,
    clip: Clip,
    clip_grid: Sequence[float],
    damping: float,
    act_order: bool,
) -> np.ndarray:
    """The layer's weight snapped onto its (possibly clipped) per-tensor grid."""
    w64 = _as_groups(la, np.asarray(w, dtype=np.float64))
    top = float(np.max(np.abs(w64))) if w64.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return w
    threshold = top
    if clip == "mse":
        best = math.inf
        for c in sorted({float(c) for c in clip_grid}, reverse=True):
            s = weight_scale(top * c)
            err = _output_error(w64 - _nearest(w64, s) * s, la.hessian)  # type: ignore[arg-type]
            if err < best:
                best, threshold = err, top * c
    scale = weight_scale(threshold)
    if rounding == "nearest":
        q = _nearest(w64, scale)
    else:
        label = node_label(la.layer.node)
        q = _gptq(w64, la.hessian, scale, damping, label, act_order)  # type: ignore[arg-type]
    # The largest magnitude must be on the grid's end, or the quantizer picks another scale.
    flat = np.abs(q).reshape(-1)
    if flat.max() < 127:
        k = int(np.argmax(np.abs(w64).reshape(-1)))
        q.reshape(-1)[k] = math.copysign(127.0, w64.reshape(-1)[k])
    return _from_groups(la, snap_to_grid(q, scale), w.shape)


def _gptq(
    w: np.ndarray,
    h: np.ndarray,
    scale: float,
    damping: float,
    label: str = "",
    act_order: bool = False,
) -> np.ndarray:
    """GPTQ rounding of ``w`` [groups, rows, cols] given ``h`` [groups, cols, cols].

    The column holding the largest |w| is rounded first (unchanged by compensation, so
    the grid's end stays occupied); the others follow in the order of ``act_order``:
    descending mean diagonal of ``h`` (GPTQ's "act order": the inputs with the most
    energy are rounded while the most columns remain to compensate), else in index order.
    """
    g, _, k = w.shape
    first = int(np.unravel_index(np.argmax(np.abs(w)), w.shape)[2])
    rest = np.argsort(-np.einsum("gii->i", h), kind="stable") if act_order else np.arange(k)
    order = np.array([first] + [int(i) for i in rest if i != first])
    w = w[:, :, order].copy()
    h = h[:, order][:, :, order].copy()
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0.0
    diag[dead] = 1.0  # inputs that never fire: no correlation, plain rounding
    mean = np.maximum(diag.mean(axis=1), 1e-30)
    ii = np.arange(k)
    h[:, ii, ii] += damping * mean[:, None]
    u = _inverse_cholesky(h, label)
    q = np.empty_like(w)
    for b0 in range(0, k, _BLOCK):  # lazy batch updates: columns in blocks, then one GEMM
        b1 = min(b0 + _BLOCK, k)
        blk = w[:, :, b0:b1]  # a view: compensation inside the block updates w
        err = np.empty_like(blk)
        for i in range(b1 - b0):
            col = blk[:, :, i]
            q[:, :, b0 + i] = _nearest(col, scale)
            err[:, :, i] = (col - q[:, :, b0 + i] * scale) / u[:, b0 + i, b0 + i][:, None]
            blk[:, :, i + 1 :] -= err[:, :, i, None] * u[:, None, b0 + i, b0 + i + 1 : b1]
        if b1 < k:
            w[:, :, b1:] -= np.matmul(err, u[:, b0:b1, b1:])
    out = np.empty_like(q)
    out[:, :, order] = q
    return out


def _inverse_cholesky(h: np.ndarray, label: str) -> np.ndarray:
    """Upper-triangular U with U^T U = H^-1 per group (more damping if H is not definite)."""
    eye = np.eye(h.shape[1])
    extra = 0.0
    for _ in range(6):
        try:
            inv = np.linalg.inv(h + extra * eye)
            return np.swapaxes(np.linalg.cholesky(inv), 1, 2)
        except np.linalg.LinAlgError:
            mean = float(np.mean(np.einsum("gii->gi", h)))
            extra = max(extra * 10.0, 1e-6 * mean)
    raise SdkError(f"round_weights: {label}: input second moment is not positive definite")


def grid_weights(model: onnx.ModelProto) -> Mapping[str, np.ndarray]:
    """Every Conv/Gemm/MatMul constant weight of ``model`` by name (for bias correction)."""
    index = GraphIndex(model)
    return {
        la.weight: numpy_helper.to_array(index.inits[la.weight])
        for la in (linear_layer(index, n) for n in model.graph.node)
        if la is not None
    }
