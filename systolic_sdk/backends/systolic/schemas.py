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


def _qlinear_conv_nhwc() -> OpSchema:
    param = OpSchema.FormalParameter
    opt = OpSchema.FormalParameterOption.Optional
    ints, string, integer = OpSchema.AttrType.INTS, OpSchema.AttrType.STRING, OpSchema.AttrType.INT
    attributes = [
        OpSchema.Attribute(name, kind, "", required=False)
        for name, kind in (
            ("auto_pad", string),
            ("kernel_shape", ints),
            ("dilations", ints),
            ("strides", ints),
            ("pads", ints),
            ("group", integer),
            ("relu", integer),
            ("maxpool", integer),
            ("pool_kernel_shape", ints),
            ("pool_pads", ints),
            ("pool_strides", ints),
            ("pool_auto_pad", string),
            ("pool_ceil_mode", integer),
            ("pool_dilations", ints),
            ("pool_storage_order", integer),
        )
    ]
    return OpSchema(
        "QLinearConv_nhwc",
        SYSTOLIC_DOMAIN,
        1,
        "QLinearConv with x and y NHWC and w HWIO, optional fused ReLU (relu=1) and max "
        "pooling (maxpool=1 with the pool_* attributes).",
        inputs=[
            param("x", "T1", "int8 input, NHWC"),
            param("x_scale", "tensor(float)", ""),
            param("x_zero_point", "T1", ""),
            param("w", "T2", "int8 weight, HWIO"),
            param("w_scale", "tensor(float)", ""),
            param("w_zero_point", "T2", ""),
            param("y_scale", "tensor(float)", ""),
            param("y_zero_point", "T3", ""),
            param("B", "T4", "int32 bias", param_option=opt),
        ],
        outputs=[param("y", "T3", "int8 output, NHWC")],
        type_constraints=[
            ("T1", ["tensor(int8)"], ""),
            ("T2", ["tensor(int8)"], ""),
            ("T3", ["tensor(int8)"], ""),
            ("T4", ["tensor(int32)"], ""),
        ],
        attributes=attributes,
    )


def register_schemas() -> None:
    """Register the schemas once (idempotent)."""
    for name, make in (("QLinearRelu", _qlinear_relu), ("QLinearConv_nhwc", _qlinear_conv_nhwc)):
        try:
            onnx.defs.get_schema(name, 1, SYSTOLIC_DOMAIN)
        except onnx.defs.SchemaError:
            onnx.defs.register_schema(make())
