"""The QLinearConv datapath (exact accumulation, bias, requantization) in blocks of samples.

:func:`conv_requantize` computes exactly
``requantize_f32(conv_accumulate_f32(x, w, bias, ...), M, dtype, zp, relu)`` (the spec's
steps 2.2-2.5), faster where one float32 GEMM is provably exact:

- the weights are prepared once per model (:class:`ConvWeights`: float32 matrix, largest
  absolute value, largest absolute row sum) and the exactness bound of spec-level
  ``abs_sum_plan`` is first tried from the weights alone: every partial sum of output
  channel ``o`` is at most ``sum_k |w_ok| * max|x|``, with ``max|x| <= 128`` for int8 and
  ``255`` for uint8, so when ``max_o sum_k |w_ok| * 128 <= 2**24`` no activation pass is
  needed; otherwise the actual ``max|x|``, then the window bound of
  :func:`datapath._conv_plan`, are tried;
- the batch is cut in blocks of whole samples; each block computes its exact sums in one
  of three forms and requantizes them while they are still in cache, writing int8
  straight into the NCHW output (:func:`datapath.requantize_f32_into`): im2col (one
  strided copy per kernel tap) and one float32 GEMM whose result lands in the
  ``(channel, sample, pixel)`` order; for stride-1 convs on large maps, an im2col over the
  kernel columns only and one GEMM with the kernel rows stacked (:func:`_row_shift_gemm`);
  for 3x3 stride-1 convs with many channels, Winograd F(2x2, 3x3) with its own exactness
  bounds (:func:`_winograd`);
- blocks run on every core (:mod:`runtime_emulator.threads`); with fewer sample blocks
  than cores, the GEMM and the epilogue are split by output channels.

Everything else (groups, a failed bound, non-finite multipliers, biases beyond 2**24)
takes the general path, :func:`datapath.conv_accumulate_f32` then
:func:`datapath.requantize_f32`. Both give the same bits; tests force each path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator import threads

F32 = np.float32
#: Columns (samples x output pixels) a GEMM block should have at least, when the batch
#: allows: narrower GEMMs lose BLAS efficiency.
MIN_BLOCK_COLUMNS = 4096
#: Largest im2col matrix (elements) of one sample block; a larger sample still runs alone.
MAX_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class ConvWeights:
    """Integer conv weights ``w`` (M, C, *kernel) prepared for the float32 GEMM.

    ``matrix``: ``w`` as float32 (M, C * taps), contiguous; ``absmax``: ``max |w|``;
    ``row_abs_sum``: ``max_o sum |w[o]|`` (an exact integer).
    """

    source: np.ndarray
    matrix: np.ndarray
    absmax: int
    row_abs_sum: int
    #: Other layouts of the weights, made when first needed (see :func:`_row_stack`).
    derived: dict[str, np.ndarray] = field(default_factory=dict, compare=False)


def prepare_conv_weights(w: np.ndarray) -> ConvWeights:
    """:class:`ConvWeights` of integer weights (M, C, *kernel); ``w`` is kept by reference."""
    w = np.asarray(w)
    m = w.shape[0]
    flat = w.reshape(m, -1)
    row = int(np.abs(flat, dtype=np.int64).sum(axis=1).max()) if flat.size else 0
    matrix = np.ascontiguousarray(flat, dtype=F32)
    return ConvWeights(w, matrix, dp._absmax(w), row)


def _input_bound(x: np.ndarray) -> int:
    """An upper bound of ``max |x|`` from the element type alone (8-bit inputs)."""
    if x.dtype == np.int8:
        return 128
    if x.dtype == np.uint8:
        return 255
    return 2**62  # unknown: computed from the data


def _single_gemm_exact(
    x: np.ndarray,
    wts: ConvWeights,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    outs: list[int],
) -> bool:
    """Whether one float32 GEMM over the whole K gives the exact sums (every partial sum
    of every output at most 2**24 in magnitude, see :func:`datapath.abs_sum_plan`)."""
    if wts.row_abs_sum * _input_bound(x) <= dp.F32_EXACT:
        return True
    x_max = dp._absmax(x)
    if wts.row_abs_sum * x_max <= dp.F32_EXACT:
        return True
    k = wts.matrix.shape[1]
    dtype, chunk = dp._conv_plan(x, wts.source, strides, pads, dilations, outs)
    return dtype == np.float32 and chunk >= k


def conv_requantize(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    multiplier: np.ndarray | float,
    dtype: np.dtype | type = np.int8,
    zero_point: np.ndarray | int = 0,
    relu: bool = False,
    *,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    group: int,
    weights: ConvWeights | None = None,
) -> np.ndarray:
    """QLinearConv from the zero-point-corrected integers to the output type:
    ``requantize_f32(conv_accumulate_f32(x, w, bias, ...), M, dtype, zero_point, relu)``.

    ``x`` (N, C, *sizes) and ``w`` (M, C/group, *kernel) are integer arrays, ``bias``
    int32 (M,) or None, ``multiplier`` float32 per tensor or with M elements (per output
    channel), ``zero_point`` per tensor. ``weights`` (from :func:`prepare_conv_weights`
    of this very ``w``) saves preparing them on every call.
    """
    m = w.shape[0]
    mult = np.asarray(multiplier, dtype=F32)
    zp = np.asarray(zero_point)
    nsp = x.ndim - 2
    outs = [
        dp.conv_output_size(
            x.shape[2 + i], w.shape[2 + i], strides[i], dilations[i], pads[i] + pads[i + nsp]
        )
        for i in range(nsp)
    ]
    fast = (
        group == 1
        and zp.size == 1
        and mult.size in (1, m)
        and bool(np.all(np.isfinite(mult)))
        and (bias is None or dp._absmax(np.asarray(bias)) <= dp.F32_EXACT)
        and x.size > 0
        and w.size > 0
        and min(outs, default=1) > 0
    )
    if fast:
        wts = weights if weights is not None and weights.source is w else None
        wts = wts or prepare_conv_weights(w)
        fast = _single_gemm_exact(x, wts, strides, pads, dilations, outs)
    m_shape = (m,) + (1,) * nsp
    if not fast:
        acc = dp.conv_accumulate_f32(
            x, w, bias, strides=strides, pads=pads, dilations=dilations, group=group
        )
        mult_b = mult.reshape(m_shape) if mult.size > 1 else mult.reshape(())
        return dp.requantize_f32(acc, mult_b, dtype, zp.reshape(()), relu)
    return _blocked(x, wts, bias, mult, np.dtype(dtype), int(zp.reshape(())), relu,
                    strides, pads, dilations, outs)  # fmt: skip


def _row_shift_ok(
    kernel: list[int], strides: list[int], padded: list[int], outs: list[int]
) -> bool:
    """Whether a 2-D conv runs as :func:`_row_shift_gemm`: kernel height > 1, vertical
    stride 1, and at most 10% more GEMM columns (the padded rows) than outputs."""
    return (
        len(kernel) == 2
        and kernel[0] > 1
        and strides[0] == 1
        and (padded[0] - outs[0]) * 10 <= outs[0]
    )


def _row_stack(wts: ConvWeights) -> np.ndarray:
    """The weights (M, C, kH, kW) as float32 (kH * M, C * kW): one row block per kernel
    row; made once per prepared weights."""
    stack = wts.derived.get("row_stack")
    if stack is None:
        m, c, kh, kw = wts.source.shape
        stack = wts.source.transpose(2, 0, 1, 3).reshape(kh * m, c * kw).astype(F32)
        wts.derived["row_stack"] = stack
    return stack


def _row_shift_gemm(
    xp: np.ndarray,
    stack: np.ndarray,
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    outs: list[int],
) -> np.ndarray:
    """Exact conv sums (M, nb, Ho * Wo) of a padded block xp (C, nb, Hp, Wp), vertical
    stride 1, from an im2col over the kernel columns only.

    ``cols[(c, dx), (n, y, x)] = xp[c, n, y, x * sW + dx * dW]`` for every padded row y;
    one GEMM with the kernel rows stacked gives ``g[dy, m, (n, y, x)]``, and the output
    is ``sum_dy g[dy, m, n, y + dy * dH, x]`` (row offsets in the flattened rows). Every
    GEMM sum and every addition is a partial sum of the output's products, so the bound
    that makes one float32 GEMM exact makes all of them exact.
    """
    c, nb, hp, _ = xp.shape
    kh, kw = kernel
    ho, wo = outs
    cols = dp._scratch("blk_cols", (c, kw, nb, hp, wo), F32)
    for dx in range(kw):
        x0 = dx * dilations[1]
        cols[:, dx] = xp[:, :, :, x0 : x0 + strides[1] * (wo - 1) + 1 : strides[1]]
    m = stack.shape[0] // kh
    g = dp._scratch("blk_acc", (kh * m, nb * hp * wo), F32)
    np.matmul(stack, cols.reshape(c * kw, nb * hp * wo), out=g)
    g4 = g.reshape(kh, m, nb, hp * wo)
    acc = g4[0, :, :, : ho * wo]
    for dy in range(1, kh):
        off = dy * dilations[0] * wo
        np.add(acc, g4[dy, :, :, off : off + ho * wo], out=acc)
    return acc


# --- Winograd F(2x2, 3x3) -------------------------------------------------------------
#
# y = A^T [(G g G^T) * (B^T d B)] A for a 4x4 input tile d, 3x3 kernel g, 2x2 output y,
# with B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], A^T = [[1,1,1,0],[0,1,-1,-1]],
# G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]]: 16 products per tile instead of 36.
# Exactness: V = B^T d B holds integers (|V| <= 4 max|x|); U = G g G^T holds multiples of
# 1/4 (4U = (2G) g (2G)^T is an integer matrix, |4U| <= 9 * 128), exact in float32. Each
# of the 16 GEMMs sums products U_mc * V_ct, multiples of 1/4: every partial sum is exact
# while 4 * sum_c |U_mc| |V_ct| <= 2**24, which holds when
# max_m sum_c |4U_mc| * 4 * max|x| <= 2**24 (checked per position). The output transform
# adds up to 9 of those sums per output; it runs in float32 when the sum of their bounds
# is at most 2**24, else in float64 (exact up to 2**53); its results are the exact conv
# sums, at most 2**24 in magnitude by the bound of the direct path, so exact in float32.

#: Winograd pays off from this many input channels on (below, the transforms cost more
#: than the GEMM work they save).
WINOGRAD_MIN_CHANNELS = 128
#: ... and when the 2x2 tiles cover at most this much of the output (7x7 maps need 8x8 of
#: tiles: the GEMMs save less than the transforms cost).
WINOGRAD_MAX_TILE_RATIO = 1.1
_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], dtype=np.int64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.int64)


@dataclass(frozen=True)
class _Winograd:
    """Winograd weights of one node: ``u`` float32 (16, M, C) = G g G^T; ``pos_bound``
    the largest ``sum_c |4U|`` of any position and output channel; ``out_bound`` the
    largest sum of those over the 9 positions an output adds; ``umax`` (16,) the largest
    ``|4U|`` of each position."""

    u: np.ndarray
    pos_bound: int
    out_bound: int
    umax: np.ndarray


def _winograd_weights(wts: ConvWeights) -> _Winograd:
    cached = wts.derived.get("winograd")
    if cached is None:
        u4 = np.einsum("ai,mcij,bj->abmc", _G2, wts.source.astype(np.int64), _G2)
        rows = np.abs(u4).sum(axis=3)  # (4, 4, M): sum_c |4U| per position and channel
        out_bound = max(
            int((rows * np.outer(np.abs(_AT[r]), np.abs(_AT[s]))[:, :, None]).sum((0, 1)).max())
            for r in range(2)
            for s in range(2)
        )
        m, c = u4.shape[2:]
        u = (u4.reshape(16, m, c) / 4).astype(F32)  # multiples of 1/4, exact
        umax = np.abs(u4).reshape(16, -1).max(axis=1)
        cached = _Winograd(u, int(rows.max()), out_bound, umax.astype(np.int64))
        wts.derived["winograd"] = cached  # type: ignore[assignment]
    return cached  # type: ignore[return-value]


def _winograd_ok(
    kernel: list[int], strides: list[int], dilations: list[int], c: int, outs: list[int]
) -> bool:
    """Whether the conv's shape suits Winograd F(2x2, 3x3): 3x3, stride 1, dilation 1,
    enough input channels, and 2x2 tiles covering not much more than the output."""
    tiles = 4 * (-(-outs[0] // 2)) * (-(-outs[1] // 2)) if len(outs) == 2 else 0
    return (
        kernel == [3, 3]
        and strides == [1, 1]
        and dilations == [1, 1]
        and c >= WINOGRAD_MIN_CHANNELS
        and tiles <= outs[0] * outs[1] * WINOGRAD_MAX_TILE_RATIO
    )


def _winograd_plan(
    x: np.ndarray, wts: ConvWeights, strides: list[int], dilations: list[int], outs: list[int]
) -> tuple[_Winograd, bool | None] | None:
    """(weights, float64 output transform) when Winograd runs exactly; (weights, None)
    when each block must check its transformed input (:func:`_winograd`); None when the
    conv's shape does not suit it."""
    if x.ndim != 4 or not _winograd_ok(list(wts.source.shape[2:]), list(strides),
                                       list(dilations), x.shape[1], outs):  # fmt: skip
        return None
    wg = _winograd_weights(wts)
    x_max = _input_bound(x)
    if wg.pos_bound * 4 * x_max > dp.F32_EXACT:
        x_max = dp._absmax(x)
        if wg.pos_bound * 4 * x_max > dp.F32_EXACT:
            return wg, None
    return wg, wg.out_bound * 4 * x_max > dp.F32_EXACT


def _winograd(
    xb: np.ndarray, plan: tuple[_Winograd, bool | None], pads: list[int], outs: list[int]
) -> np.ndarray | None:
    """Exact conv sums (M, nb, Ho, Wo) of a block xb (C, nb, H, W) by Winograd F(2x2, 3x3).

    With a plan that leaves the bound to the block, the bound of each position is
    ``max|4U| * max_t sum_c |V_ct|`` (from the transformed input); None when one exceeds
    2**24 (the caller takes another form)."""
    wg, wide = plan
    c, nb, h, w = xb.shape
    m = wg.u.shape[1]
    ho, wo = outs
    th, tw = -(-ho // 2), -(-wo // 2)
    xp = dp._scratch("wg_xp", (c, nb, 2 * th + 2, 2 * tw + 2), F32)
    xp.fill(0)
    rows = min(h, 2 * th + 2 - pads[0])
    cols = min(w, 2 * tw + 2 - pads[1])
    xp[:, :, pads[0] : pads[0] + rows, pads[1] : pads[1] + cols] = xb[:, :, :rows, :cols]
    # Input transform, rows then columns: V[(a, b), c, (n, i, j)].
    t = dp._scratch("wg_t", (4, c, nb, th, 2 * tw + 2), F32)
    r = [xp[:, :, k : k + 2 * th : 2, :] for k in range(4)]
    np.subtract(r[0], r[2], out=t[0])
    np.add(r[1], r[2], out=t[1])
    np.subtract(r[2], r[1], out=t[2])
    np.subtract(r[1], r[3], out=t[3])
    v = dp._scratch("wg_v", (16, c, nb, th, tw), F32)
    for a in range(4):
        q = [t[a][..., k : k + 2 * tw : 2] for k in range(4)]
        np.subtract(q[0], q[2], out=v[4 * a])
        np.add(q[1], q[2], out=v[4 * a + 1])
        np.subtract(q[2], q[1], out=v[4 * a + 2])
        np.subtract(q[1], q[3], out=v[4 * a + 3])
    if wide is None:
        cols = np.abs(v.reshape(16, c, -1)).sum(axis=1, dtype=np.float64).max(axis=1)
        pos = wg.umax * cols.astype(np.int64)  # the sums are exact integers in float64
        if pos.max() > dp.F32_EXACT:
            return None
        pos4 = pos.reshape(4, 4)
        wide = any(
            int((pos4 * np.outer(np.abs(_AT[i]), np.abs(_AT[j]))).sum()) > dp.F32_EXACT
            for i in range(2)
            for j in range(2)
        )
    prod = dp._scratch("wg_m", (16, m, nb * th * tw), F32)
    np.matmul(wg.u, v.reshape(16, c, nb * th * tw), out=prod)
    # Output transform, A^T M A: rows (P = A^T M) then columns, exact (see above).
    mm = prod.reshape(4, 4, m, nb, th, tw)
    pdt = np.float64 if wide else F32
    p = dp._scratch("wg_p64" if wide else "wg_p", (2, 4, m, nb, th, tw), pdt)
    np.add(mm[0], mm[1], out=p[0])
    np.add(p[0], mm[2], out=p[0])
    np.subtract(mm[1], mm[2], out=p[1])
    np.subtract(p[1], mm[3], out=p[1])
    acc = dp._scratch("wg_y", (m, nb, 2 * th, 2 * tw), F32)
    tmp = dp._scratch("wg_tmp", (m, nb, th, tw), pdt)
    for i in range(2):
        np.add(p[i, 0], p[i, 1], out=tmp)
        np.add(tmp, p[i, 2], out=acc[:, :, i::2, 0::2])
        np.subtract(p[i, 1], p[i, 2], out=tmp)
        np.subtract(tmp, p[i, 3], out=acc[:, :, i::2, 1::2])
    return acc[:, :, :ho, :wo]


def _sample_blocks(n: int, cols_per_sample: int, k: int) -> list[tuple[int, int]]:
    """Split ``n`` samples into blocks: wide enough GEMMs, at least one block per worker
    when the batch allows, im2col blocks of bounded size."""
    per = max(1, -(-MIN_BLOCK_COLUMNS // max(cols_per_sample, 1)))
    per = min(per, max(1, -(-n // threads.workers())))
    per = max(1, min(per, MAX_BLOCK_ELEMENTS // max(k * cols_per_sample, 1)))
    return [(i, min(n, i + per)) for i in range(0, n, per)]


def _blocked(
    x: np.ndarray,
    wts: ConvWeights,
    bias: np.ndarray | None,
    mult: np.ndarray,
    dtype: np.dtype,
    zp: int,
    relu: bool,
    strides: list[int],
    pads: list[int],
    dilations: list[int],
    outs: list[int],
) -> np.ndarray:
    n_batch, c = x.shape[:2]
    m, k = wts.matrix.shape
    kernel = list(wts.source.shape[2:])
    nsp = len(kernel)
    sizes = list(x.shape[2:])
    npix = int(np.prod(outs)) if outs else 1
    taps = k // c
    out = np.empty((n_batch, m, npix), dtype=dtype)
    bias_col = None if bias is None else np.asarray(bias).astype(F32).reshape(m, 1, 1)
    mult_col = mult.reshape(m, 1, 1) if mult.size > 1 else mult.reshape(())
    direct = taps == 1 and not any(pads) and all(s == 1 for s in strides)
    padded = [sizes[i] + pads[i] + pads[i + nsp] for i in range(nsp)]
    tap_list = list(np.ndindex(*kernel))
    # Each tap reads a unit-stride window of one stride phase of the padded input.
    phase_of, starts = [], []
    for t in tap_list:
        off = [t[i] * dilations[i] for i in range(nsp)]
        phase_of.append(tuple(off[i] % strides[i] for i in range(nsp)))
        starts.append([off[i] // strides[i] for i in range(nsp)])
    strided = any(s > 1 for s in strides)
    wino = _winograd_plan(x, wts, strides, dilations, outs)
    shift = _row_shift_ok(kernel, strides, padded, outs)
    stack = _row_stack(wts) if shift else None

    def padded_input(xb: np.ndarray, nb: int) -> np.ndarray:
        """The block's input as float32 (C, nb, *padded), zero padding."""
        xp = dp._scratch("blk_xp", (c, nb, *padded), F32)
        for i in range(nsp):  # zero the padding borders only
            lead = (slice(None), slice(None)) + (slice(None),) * i
            if pads[i]:
                xp[lead + (slice(0, pads[i]),)] = 0
            if pads[i + nsp]:
                xp[lead + (slice(pads[i] + sizes[i], None),)] = 0
        xp[(slice(None), slice(None)) + tuple(
            slice(pads[i], pads[i] + sizes[i]) for i in range(nsp))] = xb  # fmt: skip
        return xp

    def im2col(n0: int, n1: int) -> np.ndarray:
        """The block's im2col matrix (K, nb * npix) in this thread's work buffer."""
        nb = n1 - n0
        xb = np.moveaxis(x[n0:n1], 1, 0)  # (C, nb, *sizes), a view
        if direct:
            cols = dp._scratch("blk_cols", (c, nb, npix), F32)
            cols.reshape(c, nb, *sizes)[...] = xb
            return cols.reshape(k, nb * npix)
        xp = padded_input(xb, nb)
        cols = dp._scratch("blk_cols", (c, taps, nb, *outs), F32)
        phases: dict[tuple[int, ...], np.ndarray] = {}
        for ti in range(taps):
            ph = phase_of[ti]
            if ph not in phases:
                sl = tuple(slice(ph[i], None, strides[i]) for i in range(nsp))
                view = xp[(slice(None), slice(None)) + sl]
                phases[ph] = np.ascontiguousarray(view) if strided else view
            q = starts[ti]
            win = tuple(slice(q[i], q[i] + outs[i]) for i in range(nsp))
            cols[:, ti] = phases[ph][(slice(None), slice(None)) + win]
        return cols.reshape(k, nb * npix)

    def epilogue(acc3: np.ndarray, n0: int, n1: int, m0: int, m1: int) -> None:
        """Bias, requantization and the int8 write of output channels m0:m1."""
        ones = (1,) * (acc3.ndim - 1)
        if bias_col is not None:
            # Exact integers of magnitude at most 2**24 each: one rounding, as the
            # int32-to-float32 conversion of their (unwrapped) sum.
            np.add(acc3, bias_col[m0:m1].reshape((-1,) + ones), out=acc3)
        mult_part = mult_col[m0:m1].reshape((-1,) + ones) if mult_col.ndim else mult_col
        dst = out[n0:n1, m0:m1].transpose(1, 0, 2).reshape(acc3.shape)
        dp.requantize_f32_into(acc3, mult_part, dst, zp, relu)

    def block(n0: int, n1: int) -> None:
        nb = n1 - n0
        if wino is not None:
            acc4 = _winograd(np.moveaxis(x[n0:n1], 1, 0), wino, pads, outs)
            if acc4 is not None:
                epilogue(acc4, n0, n1, 0, m)
                return
        if shift:
            xb = np.moveaxis(x[n0:n1], 1, 0)
            acc3 = _row_shift_gemm(padded_input(xb, nb), stack, kernel, strides, dilations, outs)
        else:
            acc = dp._scratch("blk_acc", (m, nb * npix), F32)
            np.matmul(wts.matrix, im2col(n0, n1), out=acc)
            acc3 = acc.reshape(m, nb, npix)
        epilogue(acc3, n0, n1, 0, m)

    blocks = _sample_blocks(n_batch, npix, k)
    parts = threads.workers()
    if len(blocks) >= parts or m < 2 * parts:
        threads.map_blocks(block, blocks)
    else:
        # Fewer sample blocks than cores (small batches): one im2col per block, then the
        # GEMM and the epilogue split by output channels.
        for n0, n1 in blocks:
            cols = im2col(n0, n1)
            nb = n1 - n0

            def channels(
                m0: int, m1: int, n0: int = n0, n1: int = n1, nb: int = nb, cols=cols
            ) -> None:
                acc = dp._scratch("blk_acc", (m1 - m0, nb * npix), F32)
                np.matmul(wts.matrix[m0:m1], cols, out=acc)
                epilogue(acc.reshape(m1 - m0, nb, npix), n0, n1, m0, m1)

            splits = [(m * i // parts, m * (i + 1) // parts) for i in range(parts)]
            threads.map_blocks(channels, splits)
    return out.reshape(n_batch, m, *outs)
