"""com.microsoft QLinearAdd: the accelerator's rule (target "systolic") and onnxruntime's
CPU rule (target "cpu"), the latter against onnxruntime on every input pair."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator import datapath as dp
from runtime_emulator.errors import EmulatorError, UnsupportedError

from .conftest import run_kernel, run_ort_node

F32 = np.float32
MS = "com.microsoft"
NAMES = ["A", "A_scale", "A_zero_point", "B", "B_scale", "B_zero_point", "C_scale",
         "C_zero_point"]  # fmt: skip


def _ins(a, sa, za, b, sb, zb, sc, zc):
    dt = a.dtype
    return [a, np.array(sa, F32), np.array(za, dt), b, np.array(sb, F32), np.array(zb, dt),
            np.array(sc, F32), np.array(zc, dt)]  # fmt: skip


def _both(ins):
    want = run_ort_node("QLinearAdd", list(zip(NAMES, ins, strict=True)), domain=MS,
                        feeds=("A", "B"))[0]  # fmt: skip
    got = run_kernel("QLinearAdd", ins, domain=MS, target="cpu")[0]
    return got, want


# --- the accelerator's rule -----------------------------------------------------------------


def test_systolic_rule_rescales_each_input_then_adds() -> None:
    a = np.array([100, 3, -3, -100, 127], np.int8)
    b = np.array([-50, 5, -5, 10, 127], np.int8)
    ins = _ins(a, 0.2, 0, b, 0.05, 0, 0.1, 0)
    # 100*2 -> 127, then + (-25) = 102; 3*2 + 5*0.5 (2.5 -> 2) = 8; ...
    systolic = run_kernel("QLinearAdd", ins, domain=MS, target="systolic")[0]
    assert systolic.tolist() == [102, 8, -8, -123, 127]
    relu = run_kernel("QLinearAdd", ins, {"relu": 1}, domain=MS, target="systolic")[0]
    assert relu.tolist() == [102, 8, 0, 0, 127]
    # onnxruntime's meaning of the same node differs on the first element.
    assert run_kernel("QLinearAdd", ins, domain=MS, target="cpu")[0][0] == 127


def test_systolic_rule_refusals() -> None:
    a = np.zeros(4, np.int8)
    base = _ins(a, 0.1, 0, a, 0.1, 0, 0.1, 0)
    bad = {
        "A_zero_point": (2, np.array(1, np.int8)),
        "C_zero_point": (7, np.array(-1, np.int8)),
        "equal shapes": (3, np.zeros((1,), np.int8)),
        "per tensor": (4, np.array([0.1, 0.2], F32)),
        "'A' is uint8": (0, a.astype(np.uint8)),
    }
    for message, (i, v) in bad.items():
        ins = list(base)
        ins[i] = v
        with pytest.raises(UnsupportedError, match=message):
            run_kernel("QLinearAdd", ins, domain=MS, target="systolic")
    with pytest.raises(EmulatorError, match="unknown target"):
        run_kernel("QLinearAdd", base, domain=MS, target="gpu")


# --- onnxruntime's rule ------------------------------------------------------------------------


def _grid(dtype):
    info = np.iinfo(dtype)
    g = np.arange(info.min, info.max + 1)
    return np.repeat(g, g.size).astype(dtype), np.tile(g, g.size).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("seed", range(4))
def test_cpu_rule_matches_onnxruntime_on_every_pair(dtype, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _grid(dtype)
    info = np.iinfo(dtype)
    scales = [(0.5, 0.25, 1.0), (1 / 32, 0.5, 0.25)][seed] if seed < 2 else rng.uniform(
        0.001, 0.2, 3
    )  # fmt: skip
    zps = rng.integers(info.min, info.max + 1, 3) if seed % 2 else [0, 0, 0]
    ins = _ins(a, scales[0], zps[0], b, scales[1], zps[1], scales[2], zps[2])
    got, want = _both(ins)
    assert np.array_equal(got, want)


@pytest.mark.parametrize(
    ("scales", "zps", "a", "b", "value"),
    [
        (("0x1.06e356p-4", "0x1.316bdcp-4", "0x1.55ace4p-4"), (100, 137, 191), 46, 80, 98),
        (("0x1.8c5512p-4", "0x1.6e5540p-3", "0x1.4fce0ap-4"), (213, 82, 96), 242, 122, 217),
    ],
)
def test_cpu_rule_uses_onnxruntimes_fused_multiply_adds(scales, zps, a, b, value) -> None:
    """Cases where the order of float operations decides the result: onnxruntime's
    compiled kernel contracts ``rA * zpA + rB * zpB`` and each ``x * r + acc`` into FMAs
    (a, a single rounding each); computing them separately rounds to the other side."""
    sa, sb, sc = (F32(float.fromhex(h)) for h in scales)
    ins = _ins(np.full(9, a, np.uint8), sa, zps[0], np.array([b], np.uint8), sb, zps[1], sc,
               zps[2])  # fmt: skip
    got, want = _both(ins)
    assert got.tolist() == want.tolist() == [value] * 9
    r_a, r_b = np.divide(sa, sc, dtype=F32), np.divide(sb, sc, dtype=F32)
    fixed = F32(zps[2]) - (r_a * F32(zps[0]) + r_b * F32(zps[1]))
    unfused = F32(F32(fixed + F32(b) * r_b) + F32(a) * r_a)
    assert np.rint(unfused) != value


SHAPES = [
    ((2, 3, 4, 5), (1, 3, 1, 1)),  # B is the scalar of each span
    ((1, 3, 1, 1), (2, 3, 4, 5)),  # A is: onnxruntime swaps the inputs
    ((3, 1), (1, 70)),
    ((5, 40), (40,)),
    ((1,), (37,)),
    ((37,), (1,)),
    ((1,), (1,)),  # both scalars: onnxruntime treats A as the scalar (swaps)
    ((1, 1), (1, 1)),
    ((2, 33), (2, 33)),
]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(SHAPES), st.sampled_from([np.int8, np.uint8]))
def test_cpu_rule_broadcasting_matches_onnxruntime(seed: int, shapes, dtype) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, shapes[0]).astype(dtype)
    b = rng.integers(info.min, info.max + 1, shapes[1]).astype(dtype)
    s = rng.uniform(0.001, 0.2, 3)
    z = rng.integers(info.min, info.max + 1, 3)
    got, want = _both(_ins(a, s[0], z[0], b, s[1], z[1], s[2], z[2]))
    assert got.shape == want.shape and np.array_equal(got, want)


def test_cpu_rule_saturates_like_the_packs() -> None:
    a = np.array([127, -128, 100], np.int8)
    ins = _ins(a, 1000.0, 0, a, 1000.0, 0, 1.0, 0)
    got, want = _both(ins)
    assert got.tolist() == want.tolist() == [127, -128, 127]
    assert dp.qlinear_add_ort(a, 1.0, 0, a, 1.0, 0, 1.0, 0, np.int8).tolist() == [127, -128, 127]


def test_cpu_rule_swaps_a_scalar_a_into_the_kernels_b() -> None:
    """onnxruntime passes a scalar A (also when both are scalars) as the kernel's B; the
    kernel's formula is not symmetric, and this case rounds differently either way."""
    sa, sb, sc = (F32(float.fromhex(h)) for h in ("0x1.06e356p-4", "0x1.316bdcp-4",
                                                  "0x1.55ace4p-4"))  # fmt: skip
    for a_shape, b_shape, value in (((1,), (1,), 99), ((1,), (9,), 99), ((9,), (1,), 98)):
        a = np.full(a_shape, 46, np.uint8)
        b = np.full(b_shape, 80, np.uint8)
        got, want = _both(_ins(a, sa, 100, b, sb, 137, sc, 191))
        assert np.unique(got).tolist() == np.unique(want).tolist() == [value]
