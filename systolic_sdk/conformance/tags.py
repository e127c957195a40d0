"""The tags of a case: statements about which datapath corners it exercises, each derived
from the case's step-wise trace (never declared), so every tag is true. A tag holds when:

- ``tie``: rounding half away from zero instead of half to even changes the output;
  ``tie-exact`` / ``tie-f32-rounded``: it does so when applied only to ties of the exact
  arithmetic / only to ties that float32 rounding created;
- ``saturation-hi`` / ``saturation-lo``: a rounded value above 127 / below -128 saturated;
  ``rescale-saturation``: a QLinearAdd input saturated when rescaled to the output scale;
- ``acc-gt-2^24``: an int32 accumulator above 2**24 in magnitude converts to float32
  inexactly; ``acc-near-2^31``: an exact accumulator is at least 2**30 in magnitude;
  ``int32-wrap``: an exact accumulator lies outside int32 and wraps;
- ``conv-padding`` / ``pool-padding``: a conv / pool pad is > 0; ``pool-pads-asymmetric``:
  a fused pool's four pads are not all equal; ``pool-pad-as-zero`` (accelerator path) /
  ``pool-pad-excluded`` (fallback path): the fused pool's padding rule changes the output;
  ``accelerator-path`` / ``fallback-path``: how the runtime runs a QLinearConv_nhwc;
- ``stride`` / ``dilation``: a conv or pool stride / dilation is > 1; ``group``: 1 < group
  with several input channels per group; ``depthwise``: one input channel per group;
- ``odd-shape``: a GEMM dimension (rows, K, columns), or an elementwise op's size, is not
  a multiple of DIM=16; ``dim-aligned``: every one is;
- ``relu``: a ReLU (fused or QLinearRelu) clamps at least one negative value;
  ``maxpool-fusion``: QLinearConv_nhwc with ``maxpool=1``; ``batched``: QLinearMatMul with
  a 3-D or larger input; ``extremes``: an int8 input holds both -128 and 127.
"""

from __future__ import annotations

import numpy as np

from runtime_emulator.array import ArrayConfig
from systolic_sdk.conformance.cases import Case
from systolic_sdk.conformance.reference import Trace

DIM = ArrayConfig().dim


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)


def _gemm_dims(case: Case) -> list[int]:
    if case.op in ("QLinearConv", "QLinearConv_nhwc"):
        w = case.operand(3)
        group = int(case.attrs.get("group", 1))
        if case.op == "QLinearConv_nhwc":
            kh, kw, cg, m = w.shape
        else:
            m, cg, kh, kw = w.shape
        return [-1, cg * kh * kw, m // group]  # rows filled in by the caller
    if case.op == "QLinearMatMul":
        a, b = case.operand(0), case.operand(3)
        return [int(np.prod(a.shape[:-1])), int(a.shape[-1]), int(b.shape[-1])]
    return [int(case.operand(0).size)]


def derive_tags(case: Case, traces: dict[str, Trace]) -> list[str]:
    """Sorted tags of ``case`` from its traces under the policies ``rne``, ``away``,
    ``away-exact`` and ``away-f32`` (see :mod:`systolic_sdk.conformance.ties`)."""
    t = traces["rne"]
    tags: set[str] = set()
    if _differs(t.output, traces["away"].output):
        tags.add("tie")
    if _differs(t.output, traces["away-exact"].output):
        tags.add("tie-exact")
    if _differs(t.output, traces["away-f32"].output):
        tags.add("tie-f32-rounded")
    if t.sat_hi:
        tags.add("saturation-hi")
    if t.sat_lo:
        tags.add("saturation-lo")
    if t.rescale_saturated:
        tags.add("rescale-saturation")
    if t.acc32 is not None and t.acc32.size:
        acc32 = t.acc32.astype(np.int64)
        big = np.abs(acc32) > 2**24
        if np.any(big & (acc32.astype(np.float32).astype(np.int64) != acc32)):
            tags.add("acc-gt-2^24")
        if int(np.abs(t.acc_exact).max()) >= 2**30:
            tags.add("acc-near-2^31")
        if np.any((t.acc_exact < -(2**31)) | (t.acc_exact >= 2**31)):
            tags.add("int32-wrap")
    a = case.attrs
    if case.op in ("QLinearConv", "QLinearConv_nhwc"):
        if any(p > 0 for p in a.get("pads", [])):
            tags.add("conv-padding")
        if any(s > 1 for s in a.get("strides", [])):
            tags.add("stride")
        if any(d > 1 for d in a.get("dilations", [])):
            tags.add("dilation")
        group = int(a.get("group", 1))
        x = case.operand(0)
        channels = x.shape[3] if case.op == "QLinearConv_nhwc" else x.shape[1]
        if group > 1 and channels // group > 1:
            tags.add("group")
        if group > 1 and channels // group == 1:
            tags.add("depthwise")
    if case.op == "QLinearConv_nhwc":
        tags.add(f"{t.conv_path}-path")
        if int(a.get("maxpool", 0)):
            tags.add("maxpool-fusion")
            pp = list(a.get("pool_pads", [0, 0, 0, 0]))
            if any(p > 0 for p in pp):
                tags.add("pool-padding")
            if len(set(pp)) > 1:
                tags.add("pool-pads-asymmetric")
            if any(s > 1 for s in a.get("pool_strides", [1, 1])):
                tags.add("stride")
            if _differs(t.output, t.other_pool_rule_output.transpose(0, 2, 3, 1)):
                accel = t.conv_path == "accelerator"
                tags.add("pool-pad-as-zero" if accel else "pool-pad-excluded")
    if case.op == "MaxPool":
        if any(p > 0 for p in a.get("pads", [])):
            tags.add("pool-padding")
        if any(s > 1 for s in a.get("strides", [])):
            tags.add("stride")
        if any(d > 1 for d in a.get("dilations", [])):
            tags.add("dilation")
    if t.pre_relu is not None and np.any(t.pre_relu < 0):
        tags.add("relu")
    if case.op == "QLinearMatMul" and case.operand(0).ndim > 2:
        tags.add("batched")
    dims = _gemm_dims(case)
    if dims[0] == -1:  # conv: one GEMM row per output pixel
        out = t.output
        spatial = out.shape[1:3] if case.op == "QLinearConv_nhwc" else out.shape[2:]
        if case.op == "QLinearConv_nhwc" and int(a.get("maxpool", 0)):
            spatial = (t.acc32.shape[2], t.acc32.shape[3])  # the pre-pool conv output
        dims[0] = int(out.shape[0] * np.prod(spatial))
    tags.add("odd-shape" if any(d % DIM for d in dims) else "dim-aligned")
    ints = [case.value(n) for n in case.inputs if case.value(n).dtype == np.int8]
    if any(v.size and v.min() == -128 and v.max() == 127 for v in ints):
        tags.add("extremes")
    return sorted(tags)


def has_any_tie(trace: Trace) -> bool:
    """Whether any rounding step of ``trace`` saw a .5 value (of either parity)."""
    return any(step.ties for step in trace.steps)
