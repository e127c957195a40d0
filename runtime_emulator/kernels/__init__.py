"""One module per quantized op, registered by (domain, op_type).

A kernel is ``fn(inputs, attrs, ctx) -> list[ndarray]``: ``inputs`` are the node's
input arrays in ONNX order (``None`` for an omitted optional input), ``attrs`` the
node's attributes as Python values (``onnx.helper.get_attribute_value``), ``ctx`` a
:class:`KernelContext`. Importing this package registers every kernel module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The SDK's own custom-op domain for the Systolic-only ops (QLinearRelu, QLinearConv_nhwc).
SYSTOLIC_DOMAIN = "com.systolic"
#: Domains that mean the default ONNX domain.
ONNX_DOMAINS = ("", "ai.onnx")
#: Target backends a graph can be meant for; they differ for com.microsoft QLinearAdd.
TARGETS = ("systolic", "cpu")


@dataclass
class KernelContext:
    """What a kernel may need beyond its inputs and attributes."""

    target: str = "systolic"
    node_name: str = ""
    opset: int = 13
    extra: dict[str, Any] = field(default_factory=dict)


Kernel = Callable[[Sequence[np.ndarray | None], dict[str, Any], KernelContext], list[np.ndarray]]

KERNELS: dict[tuple[str, str], Kernel] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ONNX_DOMAINS else domain


def register(op_type: str, *domains: str) -> Callable[[Kernel], Kernel]:
    """Decorator: register ``fn`` for ``op_type`` in each of ``domains`` (default: ONNX)."""

    def deco(fn: Kernel) -> Kernel:
        for d in domains or ("",):
            KERNELS[(_norm_domain(d), op_type)] = fn
        return fn

    return deco


def lookup(domain: str, op_type: str) -> Kernel | None:
    """The kernel for a node, or None when the op runs on the float reference."""
    return KERNELS.get((_norm_domain(domain), op_type))
