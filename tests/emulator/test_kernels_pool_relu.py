"""MaxPool (ONNX rules, int8 and uint8 included) against onnxruntime, and QLinearRelu."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime_emulator.errors import EmulatorError, UnsupportedError
from runtime_emulator.kernels import SYSTOLIC_DOMAIN, KernelContext, lookup

from .conftest import run_kernel, run_ort_node


@st.composite
def pool_cases(draw: st.DrawFn):
    nsp = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = [draw(st.integers(1, 3)) for _ in range(nsp)]
    strides = [draw(st.integers(1, 3)) for _ in range(nsp)]
    dil = [draw(st.integers(1, 2)) for _ in range(nsp)]
    size = [draw(st.integers((k - 1) * d + 1, 8)) for k, d in zip(kernel, dil, strict=True)]
    attrs: dict = {"kernel_shape": kernel, "strides": strides}
    if draw(st.integers(0, 3)) == 0:
        attrs["auto_pad"] = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    else:
        pads = [draw(st.integers(0, k - 1)) for k in kernel]
        pads += [draw(st.integers(0, k - 1)) for k in kernel]
        attrs["pads"] = pads
        attrs["ceil_mode"] = int(draw(st.booleans()))
        attrs["dilations"] = dil
    dtype = draw(st.sampled_from([np.int8, np.uint8, np.float32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.float32:
        x = rng.normal(size=(2, 3, *size)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, (2, 3, *size)).astype(dtype)
    return x, attrs


@settings(max_examples=120, deadline=None)
@given(pool_cases())
def test_maxpool_matches_onnxruntime(case) -> None:
    x, attrs = case
    try:
        want = run_ort_node("MaxPool", [("x", x)], attrs, feeds=("x",), opset=12)[0]
    except Exception as exc:  # onnxruntime.capi...RuntimeException
        # onnxruntime's float kernel refuses the negative pads of SAME_* with a window
        # smaller than the stride; its integer kernels crop (tested with int8 inputs).
        assert "padding values must be non-negative" in str(exc)
        assert x.dtype == np.float32
        return
    got = run_kernel("MaxPool", [x], attrs)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize(
    ("size", "stride", "auto_pad"),
    [(2, 2, "SAME_UPPER"), (5, 3, "SAME_LOWER"), (7, 4, "SAME_UPPER")],
)
def test_maxpool_same_with_window_smaller_than_stride_crops(size, stride, auto_pad) -> None:
    x = (np.arange(size, dtype=np.int8) + 10).reshape(1, 1, size, 1)
    attrs = {"kernel_shape": [1, 1], "strides": [stride, 1], "auto_pad": auto_pad}
    want = run_ort_node("MaxPool", [("x", x)], attrs, feeds=("x",), opset=12)[0]
    assert np.array_equal(run_kernel("MaxPool", [x], attrs)[0], want)


@st.composite
def indices_cases(draw: st.DrawFn):
    x, attrs = draw(pool_cases())
    attrs.pop("auto_pad", None)
    nsp = x.ndim - 2
    attrs.setdefault("pads", [0] * (2 * nsp))
    if nsp == 2:
        attrs["storage_order"] = int(draw(st.booleans()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if np.issubdtype(x.dtype, np.integer) and draw(st.booleans()):
        # Many equal values (ties): the first occurrence of the maximum wins.
        info = np.iinfo(x.dtype)
        x[:] = info.min
        x.flat[rng.integers(0, x.size, 3)] = info.max
    elif x.dtype == np.float32 and draw(st.booleans()):
        x.flat[rng.integers(0, x.size, x.size // 3)] = np.nan
        x.flat[rng.integers(0, x.size, x.size // 4)] = -np.inf
    return x, attrs


@settings(max_examples=80, deadline=None)
@given(indices_cases())
def test_maxpool_indices_match_onnxruntime(case) -> None:
    x, attrs = case
    want = run_ort_node("MaxPool", [("x", x)], attrs, feeds=("x",), opset=12, n_outputs=2)
    ctx = KernelContext(node_name="pool", extra={"num_outputs": 2})
    got = lookup("", "MaxPool")([x], attrs, ctx)
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(g, w, equal_nan=True)


def test_maxpool_rejects_bad_attributes() -> None:
    x = np.zeros((1, 1, 4, 4), np.int8)
    with pytest.raises(EmulatorError, match="kernel_shape"):
        run_kernel("MaxPool", [x], {"kernel_shape": [2]})
    with pytest.raises(EmulatorError, match="does not fit"):
        run_kernel("MaxPool", [x], {"kernel_shape": [5, 5]})
    with pytest.raises(EmulatorError, match="storage_order"):
        run_kernel("MaxPool", [x], {"kernel_shape": [2, 2], "storage_order": 2})


@pytest.mark.parametrize("domain", ["", SYSTOLIC_DOMAIN])
def test_qlinearrelu(domain: str) -> None:
    x = np.array([-128, -1, 0, 1, 127], np.int8)
    assert run_kernel("QLinearRelu", [x], domain=domain)[0].tolist() == [0, 0, 0, 1, 127]
    s = np.array(0.1, np.float32)
    z = np.array(0, np.int8)
    assert run_kernel("QLinearRelu", [x, s, z, s, z], domain=domain)[0].tolist()[-1] == 127
    with pytest.raises(UnsupportedError, match="int8"):
        run_kernel("QLinearRelu", [x.astype(np.uint8)], domain=domain)
    with pytest.raises(UnsupportedError, match="x_zero_point"):
        run_kernel("QLinearRelu", [x, s, np.array(3, np.int8), s, z], domain=domain)
    with pytest.raises(UnsupportedError, match="x_scale == y_scale"):
        run_kernel("QLinearRelu", [x, s, z, np.array(0.2, np.float32), z], domain=domain)
