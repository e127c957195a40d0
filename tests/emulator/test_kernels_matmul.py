"""QLinearMatMul and MatMulInteger kernels: N-D broadcasting, 1-D operands, per-column
and per-row parameters, against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator.errors import EmulatorError, UnsupportedError

from .conftest import run_kernel, run_ort_node

F32 = np.float32
MM_NAMES = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale",
            "y_zero_point"]  # fmt: skip


def _qmm(a, b, *, bs=0.02, az=0, bz=0, yz=0, ys=0.5):
    return [a, np.array(0.1, F32), np.array(az, a.dtype), b, np.asarray(bs, F32),
            np.asarray(bz, b.dtype), np.array(ys, F32), np.array(yz, a.dtype)]  # fmt: skip


@pytest.mark.parametrize(
    ("a_shape", "b_shape"),
    [((5,), (5, 3)), ((2, 5), (5,)), ((5,), (5,)), ((4, 1, 2, 5), (3, 5, 6)), ((3, 2, 5), (5, 4))],
)
def test_qlinearmatmul_shapes_match_onnxruntime(a_shape, b_shape) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, a_shape).astype(np.uint8)
    b = rng.integers(-128, 128, b_shape).astype(np.int8)
    ins = _qmm(a, b, az=131)
    want = run_ort_node("QLinearMatMul", list(zip(MM_NAMES, ins, strict=True)), feeds=("a",))[0]
    got = run_kernel("QLinearMatMul", ins)[0]
    assert got.shape == want.shape == np.matmul(a, b.astype(np.int32)).shape
    assert np.array_equal(got, want)


def test_qlinearmatmul_per_column_matches_onnxruntime() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 7)).astype(np.uint8)
    b = rng.integers(0, 256, (7, 4)).astype(np.uint8)
    ins = _qmm(a, b, bs=rng.uniform(0.01, 0.05, 4), bz=rng.integers(0, 256, 4), az=7, yz=100)
    want = run_ort_node("QLinearMatMul", list(zip(MM_NAMES, ins, strict=True)), feeds=("a",))[0]
    assert np.array_equal(run_kernel("QLinearMatMul", ins)[0], want)


def test_qlinearmatmul_rejects_bad_inputs() -> None:
    a = np.zeros((2, 3), np.int8)
    with pytest.raises(EmulatorError, match="cannot be multiplied"):
        run_kernel("QLinearMatMul", _qmm(a, np.zeros((4, 2), np.int8)))
    with pytest.raises(EmulatorError, match="b_scale"):
        run_kernel("QLinearMatMul", _qmm(a, np.zeros((3, 2), np.int8), bs=[0.1, 0.2, 0.3]))
    mixed = _qmm(a, np.zeros((3, 2), np.uint8))
    mixed[5] = np.array(0, np.int8)  # b is uint8, its zero point int8
    with pytest.raises(EmulatorError, match="b_zero_point"):
        run_kernel("QLinearMatMul", mixed)
    with pytest.raises(UnsupportedError, match="int16"):
        run_kernel("QLinearMatMul", _qmm(a.astype(np.int16), np.zeros((3, 2), np.int8)))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.uint8, np.int8]),
    st.sampled_from(["tensor", "row"]),
    st.sampled_from(["tensor", "column"]),
    st.sampled_from([(4, 9), (2, 4, 9)]),
)
def test_matmulinteger_matches_onnxruntime(seed, adt, a_gran, b_gran, a_shape) -> None:
    rng = np.random.default_rng(seed)
    info = np.iinfo(adt)
    a = rng.integers(info.min, info.max + 1, a_shape).astype(adt)
    b = rng.integers(0, 256, (9, 5)).astype(np.uint8)
    az = rng.integers(info.min, info.max + 1, 4 if a_gran == "row" else ()).astype(adt)
    bz = rng.integers(0, 256, 5 if b_gran == "column" else ()).astype(np.uint8)
    ins = [("A", a), ("B", b), ("a_zero_point", az), ("b_zero_point", bz)]
    got = run_kernel("MatMulInteger", [a, b, az, bz])[0]
    if a_gran == "row":  # onnxruntime (and onnx.reference) take a per-tensor a_zero_point
        ai = a.astype(np.int64) - az.astype(np.int64).reshape(4, 1)
        want = (ai @ (b.astype(np.int64) - bz.astype(np.int64))).astype(np.int32)
    else:
        want = run_ort_node("MatMulInteger", ins, feeds=("A",), opset=10)[0]
    assert got.dtype == np.int32 and np.array_equal(got, want)


@pytest.mark.parametrize("a_shape", [(4, 9), (2, 4, 9)])
def test_qlinearmatmul_per_row_a_as_onnx_specifies(a_shape) -> None:
    """ONNX allows per-row ``a`` scales/zero points ([M] or [..., M, 1]); onnxruntime
    refuses them, so this checks the definition directly: per (row, column) multiplier
    f32(f32(s_a[r] * s_b[c]) / s_y), exact accumulation, round half to even."""
    rng = np.random.default_rng(len(a_shape))
    a = rng.integers(0, 256, a_shape).astype(np.uint8)
    b = rng.integers(-128, 128, (9, 3)).astype(np.int8)
    sa = rng.uniform(0.01, 0.1, 4).astype(F32)
    za = rng.integers(0, 256, 4).astype(np.uint8)
    sb = rng.uniform(0.01, 0.1, 3).astype(F32)
    shape = (4,) if len(a_shape) == 2 else (2, 4, 1)
    sa_in = np.broadcast_to(sa.reshape(4, 1), (2, 4, 1)).copy() if len(shape) == 3 else sa
    za_in = np.broadcast_to(za.reshape(4, 1), (2, 4, 1)).copy() if len(shape) == 3 else za
    ins = [a, sa_in, za_in, b, sb, np.zeros(3, np.int8), np.array(0.05, F32),
           np.array(7, np.uint8)]  # fmt: skip
    got = run_kernel("QLinearMatMul", ins)[0]
    acc = (a.astype(np.int64) - za.reshape(4, 1)) @ b.astype(np.int64)
    m = np.divide(np.multiply(sa.reshape(4, 1), sb.reshape(1, 3), dtype=F32), F32(0.05), dtype=F32)
    v = np.rint(np.multiply(acc.astype(F32), m, dtype=F32)) + 7
    assert np.array_equal(got, np.clip(v, 0, 255).astype(np.uint8))
    with pytest.raises(EmulatorError, match="a_scale"):
        run_kernel("QLinearMatMul", [a, sa[:3], *ins[2:]])
