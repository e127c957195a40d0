"""The corner table: for every Systolic op, the datapath corners a suite covers.

Each :class:`Corner` names a recipe, whether its cases must hold a tie (``tie=True``: the
output changes under round-half-away-from-zero) or no .5 value at all in any rounding step
(``tie=False``), and the tags its cases must carry (see :mod:`.tags`). Other tags a case
happens to earn are recorded too.
"""

from __future__ import annotations

from dataclasses import dataclass

from systolic_sdk.conformance.recipes import (
    AddSpec,
    ConvGeom,
    ConvSpec,
    MatMulSpec,
    Pool,
    QuantizeSpec,
    Recipe,
    add_recipe,
    conv_recipe,
    dequantize_recipe,
    matmul_recipe,
    maxpool_recipe,
    quantize_recipe,
    relu_recipe,
)


@dataclass(frozen=True)
class Corner:
    """One (op, corner) of the suite."""

    op: str
    name: str
    recipe: Recipe
    tie: bool
    requires: tuple[str, ...]
    description: str


EXACT_TIE = ("tie", "tie-exact")
F32_TIE = ("tie", "tie-f32-rounded")

#: conv corners shared by QLinearConv and QLinearConv_nhwc: (name, spec, tie, requires, text)
_CONV = [
    ("basic", ConvSpec(ConvGeom(c=3, m=5, h=9, w=9)), False, ("conv-padding",),
     "3x3 conv, pad 1, random full-range operands and bias"),
    ("relu", ConvSpec(ConvGeom(c=4, m=6, h=8, w=8), relu=True), False, ("relu",),
     "fused ReLU (relu=1) after rounding and saturation"),
    ("tie-m0.5", ConvSpec(ConvGeom(c=3, m=4, h=6, w=6), "tie", multiplier=0.5), True,
     EXACT_TIE, "multiplier 0.5: exact .5 ties"),
    ("tie-m0.25-relu", ConvSpec(ConvGeom(c=2, m=4, h=7, w=7), "tie", True, 0.25), True,
     EXACT_TIE, "multiplier 0.25 with fused ReLU: exact .5 ties"),
    ("tie-m1_32", ConvSpec(ConvGeom(c=3, m=3, h=9, w=9, strides=(2, 2)), "tie",
                           multiplier=1 / 32), True, EXACT_TIE,
     "multiplier 1/32, stride 2: exact .5 ties"),
    ("tie-m0.375", ConvSpec(ConvGeom(c=2, m=3, h=6, w=6), "tie", multiplier=0.375), True,
     EXACT_TIE, "multiplier 3/8 (not a power of two): exact .5 ties"),
    ("tie-f32", ConvSpec(ConvGeom(c=3, m=4, h=6, w=6), "tie", multiplier="f32"), True,
     F32_TIE, "multiplier like f32(1/10): the float32 product rounds onto .5"),
    ("tie-f32-relu", ConvSpec(ConvGeom(c=2, m=4, h=6, w=6), "tie", True, "f32"), True,
     F32_TIE, "float32-rounded .5 ties with fused ReLU"),
    ("saturation", ConvSpec(ConvGeom(c=3, m=6, h=7, w=7), "saturate"), False,
     ("saturation-hi", "saturation-lo"), "outputs beyond 127 and below -128 saturate"),
    ("acc-gt-2^24", ConvSpec(ConvGeom(c=3, m=6, h=6, w=6), "acc24"), False, ("acc-gt-2^24",),
     "bias beyond 2**24: the int32 to float32 conversion drops low bits"),
    ("acc-gt-2^24-wide-k", ConvSpec(ConvGeom(c=72, m=3, h=6, w=6, k=(5, 5), pads=(0, 0, 0, 0)),
                                    "acc24-wide"), False, ("acc-gt-2^24",),
     "K = 1800 products of large int8 values: sums beyond 2**24"),
    ("int32-wrap", ConvSpec(ConvGeom(c=3, m=4, h=6, w=6), "wrap"), False,
     ("acc-near-2^31", "int32-wrap"), "bias near +-2**31: the accumulator wraps"),
    ("stride", ConvSpec(ConvGeom(c=3, m=4, h=11, w=11, strides=(2, 2))), False, ("stride",),
     "stride 2 with padding"),
    ("dilation", ConvSpec(ConvGeom(c=3, m=4, h=9, w=9, pads=(2, 2, 2, 2), dilations=(2, 2))),
     False, ("dilation",), "dilation 2"),
    ("group", ConvSpec(ConvGeom(c=6, m=9, h=7, w=7, group=3)), False, ("group",),
     "group 3 (two input channels per group)"),
    ("depthwise", ConvSpec(ConvGeom(c=8, m=8, h=7, w=7, group=8)), False, ("depthwise",),
     "depthwise 3x3 (group = channels)"),
    ("depthwise-x2", ConvSpec(ConvGeom(c=4, m=8, h=6, w=6, group=4)), False, ("depthwise",),
     "depthwise with two output channels per group"),
    ("dim-aligned", ConvSpec(ConvGeom(c=16, m=16, h=4, w=4)), False, ("dim-aligned",),
     "every GEMM dimension a multiple of DIM=16"),
    ("odd-shape", ConvSpec(ConvGeom(n=2, c=17, m=19, h=7, w=5, k=(3, 1), pads=(1, 0, 1, 0))),
     False, ("odd-shape",), "batch 2, 17 -> 19 channels, non-square 3x1 kernel and input"),
]  # fmt: skip

_POOL = [
    ("maxpool", ConvSpec(ConvGeom(c=3, m=8, h=8, w=8), relu=True, pool=Pool()), False,
     ("maxpool-fusion", "accelerator-path"), "fused ReLU and 2x2/2 max pool"),
    ("maxpool-pad-as-zero", ConvSpec(ConvGeom(c=3, m=4, h=7, w=7), pool=Pool((3, 3), (2, 2),
     (1, 1, 1, 1)), negative=True), False,
     ("pool-padding", "pool-pad-as-zero", "accelerator-path"),
     "accelerator path: negative outputs, pool padding counts as 0"),
    ("maxpool-pad-excluded", ConvSpec(ConvGeom(c=3, m=4, h=7, w=6), pool=Pool((3, 3), (2, 2),
     (1, 1, 1, 1)), negative=True), False,
     ("pool-padding", "pool-pad-excluded", "fallback-path"),
     "fallback path (non-square input): ONNX MaxPool, padding excluded"),
    ("maxpool-pad-relu", ConvSpec(ConvGeom(c=3, m=4, h=6, w=6), relu=True,
     pool=Pool((3, 3), (1, 1), (1, 1, 1, 1))), False, ("pool-padding", "maxpool-fusion"),
     "fused ReLU and overlapping 3x3/1 pool with padding"),
    ("maxpool-pads-asymmetric", ConvSpec(ConvGeom(c=3, m=4, h=7, w=7), pool=Pool((3, 3),
     (2, 2), (1, 1, 0, 0)), negative=True), False,
     ("pool-pads-asymmetric", "pool-pad-as-zero", "accelerator-path"),
     "pool_pads [1,1,0,0]: the runtime pads pool_pads[0] on every side"),
    ("maxpool-tie", ConvSpec(ConvGeom(c=2, m=4, h=8, w=8), "tie", True, 0.25, Pool()), True,
     EXACT_TIE, "a .5 tie that survives ReLU and the fused pool"),
    ("maxpool-fallback-group", ConvSpec(ConvGeom(c=4, m=4, h=8, w=8, group=2),
     pool=Pool((2, 2), (2, 2), (1, 1, 1, 1)), negative=True), False,
     ("maxpool-fusion", "fallback-path", "group"),
     "grouped conv (fallback path) with a padded pool"),
]  # fmt: skip

_NHWC_SKIP = {"tie-m1_32", "tie-m0.375", "tie-f32-relu", "acc-gt-2^24-wide-k", "depthwise-x2"}

_MATMUL = [
    ("basic", MatMulSpec(), False, (), "5x24 @ 24x7, random full-range operands"),
    ("tie-m0.5", MatMulSpec((4, 12), 6, "tie", 0.5), True, EXACT_TIE, "multiplier 0.5"),
    ("tie-m0.25", MatMulSpec((5, 10), 5, "tie", 0.25), True, EXACT_TIE, "multiplier 0.25"),
    ("tie-m1_32", MatMulSpec((3, 20), 4, "tie", 1 / 32), True, EXACT_TIE, "multiplier 1/32"),
    ("tie-f32", MatMulSpec((4, 16), 5, "tie", "f32"), True, F32_TIE,
     "multiplier like f32(1/10): the float32 product rounds onto .5"),
    ("saturation", MatMulSpec((6, 20), 6, "saturate"), False,
     ("saturation-hi", "saturation-lo"), "outputs beyond 127 and below -128 saturate"),
    ("acc-gt-2^24", MatMulSpec((3, 1400), 4, "acc24"), False, ("acc-gt-2^24",),
     "K = 1400 with a row and a column of large values: sums beyond 2**24"),
    ("int32-wrap", MatMulSpec((2, 2**17 + 8), 3, "wrap"), False,
     ("acc-near-2^31", "int32-wrap"), "K = 2**17 + 8 products of -128 * -128: wraps past 2**31"),
    ("batched", MatMulSpec((2, 3, 20), 5), False, ("batched",), "3-D input, 2-D weight"),
    ("dim-aligned", MatMulSpec((16, 32), 16), False, ("dim-aligned",), "16x32 @ 32x16"),
    ("odd-shape", MatMulSpec((17, 33), 15), False, ("odd-shape",), "17x33 @ 33x15"),
]  # fmt: skip

_ADD = [
    ("basic", AddSpec(), False, (), "random ratios s_a/s_c, s_b/s_c below 1"),
    ("relu", AddSpec(relu=True), False, ("relu",), "relu=1: clamp at 0"),
    ("tie-r0.5", AddSpec(mode="tie", ratio=0.5), True, EXACT_TIE, "s_a/s_c = 0.5"),
    ("tie-r0.25-relu", AddSpec(mode="tie", relu=True, ratio=0.25), True, EXACT_TIE,
     "s_a/s_c = 0.25 with relu=1"),
    ("tie-r1_32", AddSpec(mode="tie", ratio=1 / 32), True, EXACT_TIE, "s_a/s_c = 1/32"),
    ("tie-f32", AddSpec(mode="tie", ratio="f32"), True, F32_TIE,
     "s_a/s_c like f32(1/10): the float32 product rounds onto .5"),
    ("saturation", AddSpec(mode="saturate"), False, ("saturation-hi", "saturation-lo"),
     "sums beyond 127 and below -128 saturate"),
    ("rescale-saturation", AddSpec(mode="rescale-saturate"), False, ("rescale-saturation",),
     "s_a/s_c > 2: the rescaled input saturates before the add"),
    ("dim-aligned", AddSpec((1, 16, 4, 4)), False, ("dim-aligned",), "256 elements"),
]  # fmt: skip


def _table() -> list[Corner]:
    out: list[Corner] = []
    for name, spec, tie, req, text in _CONV:
        out.append(Corner("QLinearConv", name, conv_recipe(spec, False), tie, req, text))
    for name, spec, tie, req, text in _CONV + _POOL:
        if name not in _NHWC_SKIP:
            out.append(Corner("QLinearConv_nhwc", name, conv_recipe(spec, True), tie, req, text))
    for name, spec, tie, req, text in _MATMUL:
        out.append(Corner("QLinearMatMul", name, matmul_recipe(spec), tie, req, text))
    for name, spec, tie, req, text in _ADD:
        out.append(Corner("QLinearAdd", name, add_recipe(spec), tie, req, text))
    out += [
        Corner("QLinearRelu", "basic", relu_recipe((1, 4, 5, 6)), False, ("relu", "extremes"),
               "negative values and both int8 extremes"),
        Corner("QLinearRelu", "dim-aligned", relu_recipe((1, 16, 2, 2)), False,
               ("relu", "dim-aligned"), "64 elements"),
        Corner("MaxPool", "basic", maxpool_recipe((1, 3, 8, 8)), False, ("stride",),
               "int8 2x2/2 max pool"),
        Corner("MaxPool", "pool-padding", maxpool_recipe((1, 2, 7, 7), True, kernel_shape=(3, 3),
               pads=(1, 1, 1, 1)), False, ("pool-padding", "stride"),
               "negative values, padded 3x3/2 pool: ONNX excludes the padding"),
        Corner("MaxPool", "dilation", maxpool_recipe((1, 2, 7, 7), kernel_shape=(2, 2),
               strides=(1, 1), dilations=(2, 2)), False, ("dilation",), "dilation 2"),
        Corner("MaxPool", "ceil-mode", maxpool_recipe((1, 3, 7, 9), kernel_shape=(3, 3),
               ceil_mode=1), False, ("odd-shape", "stride"), "ceil_mode 1 on a 7x9 input"),
        Corner("QuantizeLinear", "basic", quantize_recipe(QuantizeSpec()), False, (),
               "random float32 values, random scale"),
        Corner("QuantizeLinear", "tie-exact", quantize_recipe(QuantizeSpec(mode="tie",
               scale=1 / 64)), True, EXACT_TIE, "scale 1/64: x / s exactly .5"),
        Corner("QuantizeLinear", "tie-f32", quantize_recipe(QuantizeSpec(mode="tie",
               scale="f32")), True, F32_TIE, "scale like f32(1/20): the quotient rounds onto .5"),
        Corner("QuantizeLinear", "saturation", quantize_recipe(QuantizeSpec(mode="saturate")),
               False, ("saturation-hi", "saturation-lo"), "values beyond the int8 range"),
        Corner("QuantizeLinear", "dim-aligned", quantize_recipe(QuantizeSpec((1, 16, 4, 4))),
               False, ("dim-aligned",), "256 elements"),
        Corner("DequantizeLinear", "basic", dequantize_recipe((1, 3, 5, 7), False), False,
               ("extremes",), "every int8 value range, random scale"),
        Corner("DequantizeLinear", "dim-aligned", dequantize_recipe((2, 16, 2, 2), True), False,
               ("dim-aligned", "extremes"), "power-of-two scale, 128 elements"),
    ]  # fmt: skip
    return out


CORNERS: list[Corner] = _table()
OP_NAMES: list[str] = list(dict.fromkeys(c.op for c in CORNERS))
