"""ONNX schemas for the Systolic custom-domain ops, so that onnx.checker accepts them."""

from __future__ import annotations

import onnx.defs
from onnx.defs import OpSchema

from runtime_emulator.kernels import SYSTOLIC_DOMAIN


def _qlinear_relu() -> OpSchema:
    return OpSchema(
        "QLinearRelu",
        SYSTOLIC_DOMAIN,
        1,
        "y = max(x, 0) on int8 with zero point 0; the output keeps the input's scale.",
        inputs=[OpSchema.FormalParameter("X", "T", "int8 input")],
        outputs=[OpSchema.FormalParameter("Y", "T", "int8 output")],
        type_constraints=[("T", ["tensor(int8)"], "int8 tensors")],
    )


def register_schemas() -> None:
    """Register the schemas once (idempotent)."""
    try:
        onnx.defs.get_schema("QLinearRelu", 1, SYSTOLIC_DOMAIN)
        return
    except onnx.defs.SchemaError:
        pass
    onnx.defs.register_schema(_qlinear_relu())
