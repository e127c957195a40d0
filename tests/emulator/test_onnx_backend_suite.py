"""The quantization cases of the ONNX backend test suite, regenerated from the installed
onnx package's own generators, run through ``runtime_emulator.run``: integers equal,
floats equal bit for bit. Element types the emulator documents as unsupported (float8,
int4, int2, float4) must be refused with :class:`UnsupportedError`."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import runtime_emulator
from runtime_emulator.errors import UnsupportedError

QUANT_OPS = (
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
)
#: Name fragments of the cases whose element types the emulator refuses.
UNSUPPORTED = ("e4m3fn", "e5m2", "int4", "uint4", "int2", "uint2", "float4e2m1")


def _collect() -> list:
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(None)
    keep = []
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node}
        name_op = any(op.lower() in case.name.replace("_", "").lower() for op in QUANT_OPS)
        if ops & set(QUANT_OPS) or name_op:
            keep.append(case)
    return sorted(keep, key=lambda c: c.name)


CASES = _collect()


def _array(v: object) -> np.ndarray:
    return numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)


def _unsupported(name: str) -> bool:
    return any(frag in name for frag in UNSUPPORTED)


def _assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if np.issubdtype(want.dtype, np.floating):
        gn, wn = np.isnan(got), np.isnan(want)
        assert np.array_equal(gn, wn), f"{what}: NaN positions differ"
        ui = {2: np.uint16, 4: np.uint32, 8: np.uint64}[want.dtype.itemsize]
        g, w = got.view(ui)[~gn], want.view(ui)[~wn]
        assert np.array_equal(g, w), f"{what}: float bits differ\n{got}\n{want}"
    else:
        assert np.array_equal(got, want), f"{what}: values differ\n{got}\n{want}"


def test_collected_the_quantization_cases() -> None:
    names = {c.name for c in CASES}
    # The generators of every quantized op are present (45 cases with onnx 1.23).
    for op in ("quantizelinear", "dequantizelinear", "dynamicquantizelinear", "qlinearconv",
               "qlinearmatmul", "convinteger", "matmulinteger"):  # fmt: skip
        assert any(n.startswith(f"test_{op}") for n in names), op
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backend_case(case) -> None:
    model = case.model
    inputs = [vi.name for vi in model.graph.input]
    outputs = [vi.name for vi in model.graph.output]
    assert case.data_sets, "the case has data"
    for ins, outs in case.data_sets:
        feeds = {n: _array(v) for n, v in zip(inputs, ins, strict=True)}
        if _unsupported(case.name):
            with pytest.raises(UnsupportedError, match="is not supported"):
                runtime_emulator.run(model, feeds)
            continue
        got = runtime_emulator.run(model, feeds)
        for name, want in zip(outputs, outs, strict=True):
            _assert_bits_equal(np.asarray(got[name]), _array(want), f"{case.name}:{name}")
