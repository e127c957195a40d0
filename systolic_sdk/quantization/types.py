"""Enumerations users know from onnxruntime.quantization and the original quantize() API."""

from __future__ import annotations

from enum import Enum

import numpy as np
from onnx import TensorProto


class QuantType(Enum):
    """Element type of quantized tensors (onnxruntime.quantization.QuantType names)."""

    QInt8 = 0
    QUInt8 = 1
    QInt16 = 3
    QUInt16 = 4

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def from_string(name: str) -> QuantType:
        """Parse 'qint8', 'QUInt8', 'int8', 'uint16', ... (case-insensitive)."""
        key = name.strip().lower()
        key = key[1:] if key.startswith("q") else key
        for member in QuantType:
            if member.name[1:].lower() == key:
                return member
        raise ValueError(f"unknown quantization type '{name}' (use qint8, quint8, qint16, quint16)")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype({0: np.int8, 1: np.uint8, 3: np.int16, 4: np.uint16}[self.value])

    @property
    def onnx_type(self) -> int:
        return {
            0: TensorProto.INT8,
            1: TensorProto.UINT8,
            3: TensorProto.INT16,
            4: TensorProto.UINT16,
        }[self.value]

    @property
    def signed(self) -> bool:
        return self in (QuantType.QInt8, QuantType.QInt16)


class QuantFormat(Enum):
    """Output graph form (onnxruntime.quantization.QuantFormat names)."""

    QOperator = 0
    QDQ = 1

    def __str__(self) -> str:
        return self.name


class QuantizationMode(Enum):
    """The original quantize() API's modes; the older *_Static/*_Dynamic members imply static."""

    IntegerOps = 0
    QLinearOps = 1
    IntegerOps_Static = 2
    IntegerOps_Dynamic = 3
    QLinearOps_Static = 4
    QLinearOps_Dynamic = 5

    @property
    def base(self) -> QuantizationMode:
        """IntegerOps or QLinearOps."""
        if self.name.startswith("IntegerOps"):
            return QuantizationMode.IntegerOps
        return QuantizationMode.QLinearOps

    @property
    def implied_static(self) -> bool | None:
        """True/False when the member name says Static/Dynamic, else None."""
        if self.name.endswith("_Static"):
            return True
        if self.name.endswith("_Dynamic"):
            return False
        return None


class OutputForm(Enum):
    """What the rewrite emits for quantized ops (the internal, format-independent view)."""

    QOPERATOR = "qoperator"  # QLinearConv, QLinearMatMul, com.microsoft QLinearAdd/QGemm/...
    QDQ = "qdq"  # QuantizeLinear/DequantizeLinear pairs around float ops
    INTEGER = "integer"  # ConvInteger, MatMulInteger (+ DynamicQuantizeLinear when dynamic)
