"""Random case recipes aimed at the datapath's corners: ``recipe(rng) -> Case``.

A recipe draws operands and scales for one (op, corner); the generator then proves the
corner with the case's trace (``tags``) and draws again when it is not met. Tie recipes
plant a .5 tie (through the bias, an input element or the input value) at a multiplier
chosen for it; the other recipes use multipliers that make ties improbable, and the
generator rejects any draw that holds one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from systolic_sdk.conformance.cases import Case
from systolic_sdk.conformance.ties import differing_tie, exact_product_mask, exact_quotient_mask

F32 = np.float32
I8, I32 = np.int8, np.int32
INT32_MAX = 2**31 - 1

Recipe = Callable[[np.random.Generator], Case]

#: Multipliers whose float32 products land exactly on .5 only by float32 rounding
#: (``f32(1/10) * 5`` is ``0.50000000745``, which rounds to ``0.5``): odd/even fractions.
F32_TIE_FRACTIONS = ((1, 10), (3, 10), (1, 6), (1, 12), (7, 20), (1, 14), (5, 24), (1, 40))


def f32(v: float) -> np.float32:
    return F32(v)


def _scalar(v: float, dtype: type = F32) -> np.ndarray:
    return np.array(v, dtype=dtype)


def f32_tie_multiplier(rng: np.random.Generator, scale: float = 1.0) -> np.float32:
    """``f32(scale * a / b)`` for a fraction of :data:`F32_TIE_FRACTIONS`."""
    a, b = F32_TIE_FRACTIONS[int(rng.integers(len(F32_TIE_FRACTIONS)))]
    return f32(scale * a / b)


def nudge_divisor(num: np.float32, target: np.float32, start: np.float32) -> np.float32 | None:
    """A float32 ``d`` near ``start`` with ``f32(num / d) == target`` (None if none within
    64 ulps)."""
    d = F32(start)
    for direction in (np.inf, -np.inf):
        c = d
        for _ in range(64):
            if np.divide(num, c, dtype=F32) == target:
                return c
            c = np.nextafter(c, F32(direction))
    return None


def conv_scales(
    rng: np.random.Generator, multiplier: float, exact: bool
) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """``(s_x, s_w, s_y, M)`` with ``M = f32(f32(s_x*s_w)/s_y)`` equal to ``multiplier`` when
    ``exact`` (else as close as the draw gives)."""
    target = F32(multiplier)
    for _ in range(200):
        s_x = f32(rng.uniform(0.004, 0.08))
        s_w = f32(rng.uniform(0.001, 0.03))
        p = np.multiply(s_x, s_w, dtype=F32)
        s_y = np.divide(p, target, dtype=F32)
        if exact:
            s_y = nudge_divisor(p, target, s_y)
            if s_y is None:
                continue
        m = dp.requant_multiplier(s_x, s_w, s_y)
        if np.isfinite(m) and m > 0 and (not exact or m == target):
            return s_x, s_w, F32(s_y), F32(m)
    raise RuntimeError(f"no scales give the multiplier {multiplier!r}")


def tie_accumulators(
    m: np.float32, positive: bool, kind: str, low: float = 0.0, high: float = 120.0
) -> np.ndarray:
    """Integers ``t`` whose scaled value ``f32(f32(t) * M)`` is a .5 tie that the two
    rounding rules round differently, with ``low <= |v| <= high``; ``kind`` "exact" or
    "f32" keeps only ties of the exact product or only ties made by float32 rounding."""
    limit = int(min(high / float(m) + 2, 2**24))
    t = np.arange(-limit, limit + 1, dtype=np.int64)
    if positive:
        t = t[t > 0]
    v = dp.scale_accumulator(t.astype(I32), m)
    keep = differing_tie(v) & (np.abs(v) >= low) & (np.abs(v) <= high)
    exact = exact_product_mask(t.astype(F32), m, v)
    keep &= exact if kind == "exact" else (~exact if kind == "f32" else True)
    return t[keep]


def _amplitudes(std: float, k: int) -> tuple[int, int]:
    """int8 magnitudes (x, w) of uniform operands whose k-term dot products have about
    this standard deviation."""
    p = 3.0 * std / math.sqrt(max(k, 1))
    ax = int(np.clip(round(math.sqrt(p) * 1.5), 1, 127))
    aw = int(np.clip(round(p / ax), 1, 127))
    return ax, aw


def _ints(rng: np.random.Generator, amp: int, shape: tuple[int, ...], lo: int = -128) -> np.ndarray:
    return rng.integers(max(-amp, lo), min(amp, 127) + 1, size=shape).astype(I8)


# --- convolution ----------------------------------------------------------------------------


@dataclass
class ConvGeom:
    """Shape and attributes of a 2-D conv (NCHW view)."""

    n: int = 1
    c: int = 3
    m: int = 4
    h: int = 7
    w: int = 7
    k: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (1, 1, 1, 1)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1

    @property
    def taps(self) -> int:
        return (self.c // self.group) * self.k[0] * self.k[1]


@dataclass
class Pool:
    """A fused max pool of QLinearConv_nhwc."""

    kernel: tuple[int, int] = (2, 2)
    strides: tuple[int, int] = (2, 2)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass
class ConvSpec:
    """How a conv recipe draws: ``mode`` is plain, tie, saturate, acc24, acc24-wide, wrap."""

    geom: ConvGeom = field(default_factory=ConvGeom)
    mode: str = "plain"
    relu: bool = False
    multiplier: float | str | None = None  # tie mode: a value, or "f32"
    pool: Pool | None = None
    negative: bool = False  # outputs mostly negative (pool-padding rules)


def _conv_acc(x: np.ndarray, w: np.ndarray, g: ConvGeom) -> np.ndarray:
    return dp.conv_accumulate_reference(
        x, w, strides=list(g.strides), pads=list(g.pads), dilations=list(g.dilations),
        group=g.group,
    )  # fmt: skip


def conv_recipe(spec: ConvSpec, nhwc: bool) -> Recipe:
    """A QLinearConv (or QLinearConv_nhwc) recipe."""

    def draw(rng: np.random.Generator) -> Case:
        g = spec.geom
        xs, ws = (g.n, g.c, g.h, g.w), (g.m, g.c // g.group, g.k[0], g.k[1])
        m_target: float | None = None
        if spec.mode == "tie":
            if spec.multiplier == "f32":
                m_target = float(f32_tie_multiplier(rng, 1.0 if rng.random() < 0.5 else 0.25))
            else:
                m_target = float(spec.multiplier)
            ax, aw = _amplitudes(45.0 / m_target, g.taps)
            x, w = _ints(rng, ax, xs), _ints(rng, aw, ws, -127)
        elif spec.mode == "acc24-wide":
            x = rng.integers(100, 128, size=xs).astype(I8)
            w = rng.integers(100, 128, size=ws).astype(I8)
        else:
            x, w = _ints(rng, 128, xs), _ints(rng, 127, ws, -127)
        acc0 = _conv_acc(x, w, g)
        spread = max(1, int(np.abs(acc0).max()))
        std = max(1.0, float(acc0.std()))
        if spec.mode == "acc24":
            sign = rng.choice([-1, 1], size=g.m)
            bias = (sign * rng.integers(2**24 + 2**20, 2**26, size=g.m)).astype(I32)
        elif spec.mode == "wrap":
            d = rng.integers(0, max(2, spread // 2), size=g.m)
            up = np.arange(g.m) % 2 == 0
            bias = np.where(up, INT32_MAX - d, -(2**31) + d).astype(I32)
        else:
            bias = rng.integers(-int(std // 2) - 1, int(std // 2) + 2, size=g.m).astype(I32)
            if spec.negative:
                bias = (bias - int(2.5 * std) - 2).astype(I32)
        acc = acc0 + bias.astype(np.int64).reshape(1, -1, 1, 1)
        acc32 = dp.wrap32(acc).astype(np.int64)
        top = max(1, int(np.abs(acc32).max()))
        if spec.mode == "tie":
            s_x, s_w, s_y, m = conv_scales(rng, m_target, exact=True)
        else:
            target = {
                "plain": rng.uniform(70, 120) / top,
                "saturate": rng.uniform(300, 500) / top,
                "acc24": rng.uniform(70, 120) / top,
                "acc24-wide": rng.uniform(70, 120) / top,
                "wrap": rng.uniform(70, 120) / 2**31,
            }[spec.mode]
            s_x, s_w, s_y, m = conv_scales(rng, target, exact=False)
        if spec.mode == "tie":
            kind = "f32" if spec.multiplier == "f32" else "any"
            low = 30.0 if spec.pool else 0.0
            cands = tie_accumulators(m, spec.relu or spec.pool is not None, kind, low, 100.0)
            idx = tuple(int(rng.integers(s)) for s in acc.shape)
            if cands.size:  # else the draw is rejected unless it holds a tie already
                t = int(cands[np.argmin(np.abs(cands - acc[idx]) + rng.random(cands.size) * 8)])
                bias[idx[1]] = I32(int(bias[idx[1]]) + t - int(acc[idx]))
        attrs: dict[str, Any] = {
            "dilations": list(g.dilations),
            "group": g.group,
            "kernel_shape": list(g.k),
            "pads": list(g.pads),
            "strides": list(g.strides),
        }
        if spec.relu:
            attrs["relu"] = 1
        if spec.pool is not None:
            attrs.update(
                maxpool=1,
                pool_kernel_shape=list(spec.pool.kernel),
                pool_pads=list(spec.pool.pads),
                pool_strides=list(spec.pool.strides),
            )
        op = "QLinearConv_nhwc" if nhwc else "QLinearConv"
        if nhwc:
            x, w = (
                np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
            )
        consts = {
            "x_scale": _scalar(s_x),
            "x_zero_point": _scalar(0, I8),
            "w": w,
            "w_scale": _scalar(s_w),
            "w_zero_point": _scalar(0, I8),
            "y_scale": _scalar(s_y),
            "y_zero_point": _scalar(0, I8),
            "B": bias,
        }
        return Case(
            op=op, corner="", node_inputs=["x", *consts], inputs={"x": x}, consts=consts,
            attrs=attrs, multipliers=[float(m)],
        )  # fmt: skip

    return draw


# --- matmul --------------------------------------------------------------------------------


@dataclass
class MatMulSpec:
    """A QLinearMatMul recipe: ``a`` of ``a_shape`` (last axis K), ``b`` K x ``n``."""

    a_shape: tuple[int, ...] = (5, 24)
    n: int = 7
    mode: str = "plain"  # plain, tie, saturate, acc24, wrap
    multiplier: float | str | None = None


def matmul_recipe(spec: MatMulSpec) -> Recipe:
    def draw(rng: np.random.Generator) -> Case:
        k = spec.a_shape[-1]
        bs = (k, spec.n)
        m_target = None
        if spec.mode == "tie":
            m_target = (
                float(f32_tie_multiplier(rng)) if spec.multiplier == "f32" else spec.multiplier
            )
            ax, aw = _amplitudes(45.0 / m_target, k)
            a, b = _ints(rng, ax, spec.a_shape), _ints(rng, aw, bs, -127)
        elif spec.mode == "acc24":
            a = rng.integers(-128, 128, size=spec.a_shape).astype(I8)
            b = rng.integers(-127, 128, size=bs).astype(I8)
            row = (0,) * (len(spec.a_shape) - 1)
            a[row] = rng.integers(110, 128, size=k)  # one row and column of extremes
            b[:, 0] = rng.integers(110, 128, size=k)
        elif spec.mode == "wrap":
            a = rng.integers(-128, 128, size=spec.a_shape).astype(I8)
            b = rng.integers(-127, 128, size=bs).astype(I8)
            a[(0,) * (len(spec.a_shape) - 1)] = -128  # 16384 * K > 2**31: wraps
            b[:, 0] = -128
        else:
            a, b = _ints(rng, 128, spec.a_shape), _ints(rng, 127, bs, -127)
        acc = dp.int_matmul_reference(a, b)
        acc32 = dp.wrap32(acc).astype(np.int64)
        top = max(1, int(np.abs(acc32).max()))
        if spec.mode == "tie":
            s_a, s_b, s_y, m = conv_scales(rng, m_target, exact=True)
            kind = "f32" if spec.multiplier == "f32" else "any"
            cands = tie_accumulators(m, False, kind, 0.0, 100.0)
            idx = tuple(int(rng.integers(s)) for s in acc.shape)
            kk = int(rng.integers(k))
            rest = int(acc[idx]) - int(a[idx[:-1] + (kk,)]) * int(b[kk, idx[-1]])
            near = cands[np.abs(cands - rest) <= 127]
            if near.size:  # a[.., kk] = t - rest with b[kk, j] = 1
                t = int(near[rng.integers(near.size)])
                b[kk, idx[-1]] = 1
                a[idx[:-1] + (kk,)] = I8(t - rest)
        else:
            target = {
                "plain": rng.uniform(70, 120) / top,
                "saturate": rng.uniform(300, 500) / top,
                "acc24": rng.uniform(70, 120) / top,
                "wrap": rng.uniform(70, 120) / 2**31,
            }[spec.mode]
            s_a, s_b, s_y, m = conv_scales(rng, target, exact=False)
        consts = {
            "a_scale": _scalar(s_a),
            "a_zero_point": _scalar(0, I8),
            "b": b,
            "b_scale": _scalar(s_b),
            "b_zero_point": _scalar(0, I8),
            "y_scale": _scalar(s_y),
            "y_zero_point": _scalar(0, I8),
        }
        return Case(
            op="QLinearMatMul", corner="", node_inputs=["a", *consts], inputs={"a": a},
            consts=consts, multipliers=[float(m)],
        )  # fmt: skip

    return draw


# --- QLinearAdd ----------------------------------------------------------------------------


@dataclass
class AddSpec:
    """A QLinearAdd recipe: ``ratio`` is ``s_a / s_c`` (a value, "f32", or None: random)."""

    shape: tuple[int, ...] = (1, 5, 7, 9)
    mode: str = "plain"  # plain, tie, saturate, rescale-saturate
    relu: bool = False
    ratio: float | str | None = None


def _scale_for_ratio(
    rng: np.random.Generator, s_c: np.float32, ratio: np.float32
) -> np.float32 | None:
    """A float32 ``s`` with ``f32(s / s_c) == ratio``."""
    s = np.multiply(ratio, s_c, dtype=F32)
    for direction in (np.inf, -np.inf):
        c = s
        for _ in range(64):
            if np.divide(c, s_c, dtype=F32) == ratio:
                return c
            c = np.nextafter(c, F32(direction))
    return None


def add_recipe(spec: AddSpec) -> Recipe:
    def draw(rng: np.random.Generator) -> Case:
        for _ in range(100):
            s_c = f32(rng.uniform(0.02, 0.2))
            if spec.mode == "tie":
                r = f32_tie_multiplier(rng) if spec.ratio == "f32" else f32(spec.ratio)
            elif spec.mode == "rescale-saturate":
                r = f32(rng.uniform(2.2, 3.9))
            else:
                r = f32(rng.uniform(0.35, 0.95))
            s_a = _scale_for_ratio(rng, s_c, r)
            if s_a is not None:
                break
        else:
            raise RuntimeError("no scale pair gives the ratio")
        s_b = f32(s_c * rng.uniform(0.35, 0.95))
        a = _ints(rng, 128, spec.shape)
        amp_b = 128 if spec.mode in ("saturate", "rescale-saturate") else 60
        b = _ints(rng, amp_b, spec.shape)
        if spec.mode == "saturate":
            a.reshape(-1)[: a.size // 3] = rng.integers(100, 128, size=a.size // 3)
            b.reshape(-1)[: b.size // 3] = rng.integers(100, 128, size=b.size // 3)
            a.reshape(-1)[-a.size // 3 :] = rng.integers(-128, -100, size=a.size // 3)
            b.reshape(-1)[-b.size // 3 :] = rng.integers(-128, -100, size=b.size // 3)
        if spec.mode == "tie":
            vals = np.arange(-128, 128)
            v = np.multiply(vals.astype(F32), r, dtype=F32)
            ok = differing_tie(v) & (np.abs(v) < 60)
            exact = exact_product_mask(vals.astype(F32), r, v)
            ok &= ~exact if spec.ratio == "f32" else True
            if spec.relu:
                ok &= v > 0
            cands = vals[ok]
            if cands.size:
                flat = a.reshape(-1)
                pos = rng.choice(flat.size, size=min(4, flat.size), replace=False)
                flat[pos] = rng.choice(cands, size=pos.size)
                b.reshape(-1)[pos] = rng.integers(0, 20, size=pos.size)
        consts_a = {"A_scale": _scalar(s_a), "A_zero_point": _scalar(0, I8)}
        consts_b = {"B_scale": _scalar(s_b), "B_zero_point": _scalar(0, I8)}
        consts_c = {"C_scale": _scalar(s_c), "C_zero_point": _scalar(0, I8)}
        ratios = [np.divide(s, s_c, dtype=F32) for s in (s_a, s_b)]
        return Case(
            op="QLinearAdd", corner="",
            node_inputs=["A", *consts_a, "B", *consts_b, *consts_c],
            inputs={"A": a, "B": b}, consts={**consts_a, **consts_b, **consts_c},
            attrs={"relu": 1} if spec.relu else {}, output="C",
            multipliers=[float(v) for v in ratios],
        )  # fmt: skip

    return draw


# --- host ops -------------------------------------------------------------------------------


@dataclass
class QuantizeSpec:
    """A QuantizeLinear recipe: ``scale`` a value, "f32" (odd fraction) or None (random)."""

    shape: tuple[int, ...] = (1, 3, 5, 7)
    mode: str = "plain"  # plain, tie, saturate
    scale: float | str | None = None


def quantize_recipe(spec: QuantizeSpec) -> Recipe:
    def draw(rng: np.random.Generator) -> Case:
        if spec.scale == "f32":
            s = f32_tie_multiplier(rng, 0.5)
        elif spec.scale is not None:
            s = f32(spec.scale)
        else:
            s = f32(rng.uniform(0.004, 0.1))
        spread = 300.0 if spec.mode == "saturate" else 40.0
        x = (rng.standard_normal(spec.shape) * spread * float(s)).astype(F32)
        if spec.mode == "tie":
            flat = x.reshape(-1)
            pos = rng.choice(flat.size, size=min(6, flat.size), replace=False)
            for p in pos:
                k = 2 * int(rng.integers(-30, 30))  # even integer part: the rules differ
                half = k + (0.5 if k >= 0 else -0.5)
                c = np.multiply(F32(half), s, dtype=F32)
                for cand in (c, np.nextafter(c, F32(np.inf)), np.nextafter(c, F32(-np.inf))):
                    v = np.divide(cand, s, dtype=F32)
                    exact = bool(exact_quotient_mask(cand, s, v))
                    if v == half and (exact != (spec.scale == "f32")):
                        flat[p] = cand
                        break
        consts = {"y_scale": _scalar(s), "y_zero_point": _scalar(0, I8)}
        return Case(
            op="QuantizeLinear", corner="", node_inputs=["x", *consts], inputs={"x": x},
            consts=consts, multipliers=[float(s)],
        )  # fmt: skip

    return draw


def dequantize_recipe(shape: tuple[int, ...], dyadic: bool) -> Recipe:
    def draw(rng: np.random.Generator) -> Case:
        s = f32(2.0 ** -int(rng.integers(3, 9))) if dyadic else f32(rng.uniform(0.001, 0.2))
        x = rng.integers(-128, 128, size=shape).astype(I8)
        x.reshape(-1)[:2] = [-128, 127]
        consts = {"x_scale": _scalar(s), "x_zero_point": _scalar(0, I8)}
        return Case(
            op="DequantizeLinear", corner="", node_inputs=["x", *consts], inputs={"x": x},
            consts=consts, multipliers=[float(s)],
        )  # fmt: skip

    return draw


def relu_recipe(shape: tuple[int, ...]) -> Recipe:
    def draw(rng: np.random.Generator) -> Case:
        x = rng.integers(-128, 128, size=shape).astype(I8)
        x.reshape(-1)[:2] = [-128, 127]
        return Case(op="QLinearRelu", corner="", node_inputs=["x"], inputs={"x": x}, consts={})

    return draw


def maxpool_recipe(shape: tuple[int, ...], negative: bool = False, **attrs: Any) -> Recipe:
    def draw(rng: np.random.Generator) -> Case:
        hi = -1 if negative else 128
        x = rng.integers(-128, hi, size=shape).astype(I8)
        full = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}
        full.update({k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()})
        return Case(op="MaxPool", corner="", node_inputs=["x"], inputs={"x": x}, consts={},
                    attrs=full)  # fmt: skip

    return draw
