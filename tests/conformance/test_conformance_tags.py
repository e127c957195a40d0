"""Every tag of every case is a true statement, checked here from the suite's files with
plain int64 arithmetic (not the generator's own trace), and the tie invariant holds: a case
not tagged ``tie`` has no .5 value in any rounding step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import runtime_emulator.datapath as dp
from runtime_emulator.kernels.qlinear_conv_nhwc import conv_path

F32 = np.float32
TIE_TAGS = {"tie", "tie-exact", "tie-f32-rounded"}


def _conv_int64(x, w, strides, pads, dilations, group) -> np.ndarray:
    """NCHW x OIHW convolution, exact int64, one kernel tap at a time."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    out = np.zeros((n, m, oh, ow), np.int64)
    mg = m // group
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            patch = xp[:, :, r0 : r0 + strides[0] * (oh - 1) + 1 : strides[0],
                       c0 : c0 + strides[1] * (ow - 1) + 1 : strides[1]]  # fmt: skip
            for g in range(group):
                wg = w[g * mg : (g + 1) * mg, :, i, j].astype(np.int64)
                out[:, g * mg : (g + 1) * mg] += np.einsum(
                    "nchw,mc->nmhw", patch[:, g * cg : (g + 1) * cg], wg
                )
    return out


def _scaled(acc32: np.ndarray, s1, s2, s3) -> np.ndarray:
    m = F32(F32(s1) * F32(s2)) / F32(s3)
    return acc32.astype(F32) * F32(m)


def _ties(v: np.ndarray) -> tuple[bool, bool]:
    """(any .5 value, any .5 value with an even integer part)."""
    t = np.trunc(v)
    tie = np.abs(v - t) == 0.5
    return bool(tie.any()), bool((tie & (np.fmod(t, 2) == 0)).any())


def _acc_facts(acc: np.ndarray, facts: dict[str, bool]) -> np.ndarray:
    acc32 = (acc + 2**31) % 2**32 - 2**31
    inexact = acc32.astype(F32).astype(np.int64) != acc32
    facts["acc-gt-2^24"] = bool(np.any((np.abs(acc32) > 2**24) & inexact))
    facts["acc-near-2^31"] = bool(np.abs(acc).max() >= 2**30)
    facts["int32-wrap"] = bool(np.any(acc32 != acc))
    return acc32


def _case_facts(root: Path, case: dict) -> tuple[dict[str, bool], list[np.ndarray], np.ndarray]:
    """(tag -> truth, the float values of every rounding step, expected output)."""
    model = onnx.load(str(root / case["model"]))
    node = model.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    env = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    feeds = {}
    for entry in case["inputs"]:
        t = onnx.load_tensor(str(root / entry["file"]))
        feeds[t.name] = env[t.name] = numpy_helper.to_array(t)
    expected = numpy_helper.to_array(onnx.load_tensor(str(root / case["outputs"][0]["file"])))
    ops = [env.get(name) for name in node.input]
    op = case["op"]
    facts: dict[str, bool] = {}
    steps: list[np.ndarray] = []
    dims: list[int] = [int(ops[0].size)]
    relu = bool(attrs.get("relu", 0))
    pre_relu = None
    if op in ("QLinearConv", "QLinearConv_nhwc"):
        x, w = ops[0], ops[3]
        if op == "QLinearConv_nhwc":
            x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
        group = attrs["group"]
        acc = _conv_int64(x, w, attrs["strides"], attrs["pads"], attrs["dilations"], group)
        acc = acc + ops[8].astype(np.int64).reshape(1, -1, 1, 1)
        acc32 = _acc_facts(acc, facts)
        v = _scaled(acc32, ops[1], ops[4], ops[6])
        steps.append(v)
        r = dp.rne(v)
        facts["saturation-hi"], facts["saturation-lo"] = (
            bool((r > 127).any()),
            bool((r < -128).any()),
        )
        y = dp.sat8(r)
        pre_relu = y
        if relu:
            y = np.maximum(y, 0)
        facts["conv-padding"] = any(p > 0 for p in attrs["pads"])
        facts["stride"] = any(s > 1 for s in attrs["strides"])
        facts["dilation"] = any(d > 1 for d in attrs["dilations"])
        cg = w.shape[1]
        facts["group"] = group > 1 and cg > 1
        facts["depthwise"] = group > 1 and cg == 1
        dims = [acc.shape[0] * acc.shape[2] * acc.shape[3], cg * w.shape[2] * w.shape[3],
                w.shape[0] // group]  # fmt: skip
        if op == "QLinearConv_nhwc":
            path = conv_path(attrs, ops[0].shape, ops[3].shape)
            facts[f"{path}-path"] = True
            if attrs.get("maxpool", 0):
                pk, ps, pp = attrs["pool_kernel_shape"], attrs["pool_strides"], attrs["pool_pads"]
                zero = dp.max_pool(y, pk, ps, [pp[0]] * 4, pad_value=0)
                onnx_rule = dp.max_pool(y, pk, ps, pp, pad_value=None)
                y, other = (zero, onnx_rule) if path == "accelerator" else (onnx_rule, zero)
                differs = not np.array_equal(zero, onnx_rule)
                facts["maxpool-fusion"] = True
                facts["pool-padding"] = any(p > 0 for p in pp)
                facts["pool-pads-asymmetric"] = len(set(pp)) > 1
                facts["stride"] |= any(s > 1 for s in ps)
                facts["pool-pad-as-zero"] = path == "accelerator" and differs
                facts["pool-pad-excluded"] = path == "fallback" and differs
            y = y.transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(y, expected)
    elif op == "QLinearMatMul":
        a, b = ops[0], ops[3]
        acc32 = _acc_facts(np.matmul(a.astype(np.int64), b.astype(np.int64)), facts)
        v = _scaled(acc32, ops[1], ops[4], ops[6])
        steps.append(v)
        r = dp.rne(v)
        facts["saturation-hi"], facts["saturation-lo"] = (
            bool((r > 127).any()),
            bool((r < -128).any()),
        )
        facts["batched"] = a.ndim > 2
        dims = [int(np.prod(a.shape[:-1])), a.shape[-1], b.shape[-1]]
        np.testing.assert_array_equal(dp.sat8(r), expected)
    elif op == "QLinearAdd":
        s_c = F32(ops[6])
        terms = []
        for i in (0, 3):
            v = ops[i].astype(F32) * (F32(ops[i + 1]) / s_c)
            steps.append(v)
            r = dp.rne(v)
            facts["rescale-saturation"] = facts.get("rescale-saturation", False) or bool(
                ((r > 127) | (r < -128)).any()
            )
            terms.append(dp.sat8(r).astype(np.int16))
        total = terms[0] + terms[1]
        facts["saturation-hi"], facts["saturation-lo"] = (
            bool((total > 127).any()),
            bool((total < -128).any()),
        )
        pre_relu = dp.sat8(total)
    elif op == "QuantizeLinear":
        v = ops[0] / F32(ops[1])
        steps.append(v)
        r = dp.rne(v)
        facts["saturation-hi"], facts["saturation-lo"] = (
            bool((r > 127).any()),
            bool((r < -128).any()),
        )
    elif op == "QLinearRelu":
        pre_relu, relu = ops[0], True
    elif op == "MaxPool":
        facts["pool-padding"] = any(p > 0 for p in attrs.get("pads", []))
        facts["stride"] = any(s > 1 for s in attrs.get("strides", []))
        facts["dilation"] = any(d > 1 for d in attrs.get("dilations", []))
    facts["relu"] = relu and pre_relu is not None and bool((pre_relu < 0).any())
    aligned = all(d % 16 == 0 for d in dims)
    facts["dim-aligned"], facts["odd-shape"] = aligned, not aligned
    facts["extremes"] = any(
        f.dtype == np.int8 and f.min() == -128 and f.max() == 127 for f in feeds.values()
    )
    return facts, steps, expected


def test_every_tag_is_true(suite_dir: Path, manifest: dict) -> None:
    for case in manifest["cases"]:
        facts, _, _ = _case_facts(suite_dir, case)
        claimed = set(case["tags"]) - TIE_TAGS
        true = {tag for tag, ok in facts.items() if ok}
        assert claimed == true, (case["name"], sorted(claimed ^ true))


def test_tie_invariant(suite_dir: Path, manifest: dict) -> None:
    for case in manifest["cases"]:
        _, steps, _ = _case_facts(suite_dir, case)
        any_tie = any(_ties(v)[0] for v in steps)
        differing = any(_ties(v)[1] for v in steps)
        tags = set(case["tags"])
        if "tie" in tags:
            assert differing, case["name"]
            assert tags & {"tie-exact", "tie-f32-rounded"}, case["name"]
        else:
            assert not any_tie, case["name"]
            assert not tags & TIE_TAGS, case["name"]


@pytest.mark.parametrize(
    "tag",
    ["tie", "tie-exact", "tie-f32-rounded", "saturation-hi", "saturation-lo", "acc-gt-2^24",
     "acc-near-2^31", "int32-wrap", "conv-padding", "pool-padding", "pool-pad-as-zero",
     "pool-pad-excluded", "stride", "dilation", "group", "depthwise", "odd-shape", "dim-aligned",
     "relu", "maxpool-fusion", "batched", "rescale-saturation"],
)  # fmt: skip
def test_suite_covers_each_corner(manifest: dict, tag: str) -> None:
    assert any(tag in c["tags"] for c in manifest["cases"])


def test_f32_rounded_ties_are_not_exact(suite_dir: Path, manifest: dict) -> None:
    """A ``tie-f32-rounded`` case's multiplier is not a power of two (its .5 comes from
    float32 rounding); ``tie-exact`` cases include the powers of two 0.5, 0.25, 1/32."""
    for case in manifest["cases"]:
        if "tie-f32-rounded" in case["tags"]:
            m = case["multipliers"][0]["value"]
            assert np.frexp(m)[0] != 0.5, case["name"]
    exact = {c["multipliers"][0]["value"] for c in manifest["cases"] if "tie-exact" in c["tags"]}
    assert {0.5, 0.25, 1 / 32} <= exact
