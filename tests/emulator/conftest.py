"""Helpers for the emulator's kernel tests: run one node on onnxruntime's CPU kernels, or
on an emulator kernel directly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import runtime_emulator.kernels.all  # noqa: F401  (registers every kernel)
from runtime_emulator.kernels import KernelContext, lookup

OrtNode = Callable[..., list[np.ndarray]]
Kernel = Callable[..., list[np.ndarray]]


def _tensor_type(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def run_ort_node(
    op_type: str,
    inputs: Sequence[tuple[str, np.ndarray | None]],
    attrs: dict[str, Any] | None = None,
    *,
    feeds: Sequence[str] = (),
    n_outputs: int = 1,
    domain: str = "",
    opset: int = 21,
) -> list[np.ndarray]:
    """Run one node on onnxruntime's CPU provider (no graph optimizations).

    ``inputs`` are (name, array) in ONNX order (None for an omitted optional input); the
    names in ``feeds`` become graph inputs, the others initializers.
    """
    inits, graph_inputs, feed_values, names = [], [], {}, []
    for name, value in inputs:
        if value is None:
            names.append("")
            continue
        names.append(name)
        value = np.asarray(value)
        if name in feeds:
            graph_inputs.append(
                helper.make_tensor_value_info(name, _tensor_type(value.dtype), list(value.shape))
            )
            feed_values[name] = value
        else:
            inits.append(numpy_helper.from_array(value, name))
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, domain=domain, **(attrs or {}))
    graph = helper.make_graph(
        [node], "g", graph_inputs, [helper.make_value_info(o, helper.TypeProto()) for o in outs],
        initializer=inits,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed_values)


def run_kernel(
    op_type: str,
    inputs: Sequence[np.ndarray | None],
    attrs: dict[str, Any] | None = None,
    *,
    domain: str = "",
    target: str = "cpu",
) -> list[np.ndarray]:
    """Run an emulator kernel as the executor does: looked up by (domain, op_type)."""
    fn = lookup(domain, op_type)
    assert fn is not None, f"no kernel for {domain}:{op_type}"
    return fn(list(inputs), dict(attrs or {}), KernelContext(target=target, node_name=op_type))


@pytest.fixture
def ort_node() -> OrtNode:
    return run_ort_node


@pytest.fixture
def kernel() -> Kernel:
    return run_kernel
