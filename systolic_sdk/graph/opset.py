"""Opset upgrade with onnx.version_converter, refusing with a clear error when it fails."""

from __future__ import annotations

import onnx
from onnx import version_converter

from systolic_sdk.errors import SdkError
from systolic_sdk.graph.util import opset_version


def upgrade_opset(model: onnx.ModelProto, target: int, reason: str = "") -> onnx.ModelProto:
    """Return ``model`` converted to default-domain opset ``target`` (a new model).

    Raises SdkError naming the model's opset when the converter fails or writes a model
    that onnx.checker rejects. A model already at or above ``target`` is returned as is.
    """
    current = opset_version(model)
    if current >= target:
        return model
    why = f" ({reason})" if reason else ""
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises plain RuntimeError/ValidationError
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SdkError(
            f"model has opset {current}; upgrading it to opset {target}{why} failed: {detail}"
        ) from None
    return converted
