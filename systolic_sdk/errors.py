"""User-facing errors: one clear line, exit code 2 from the CLI, nothing written."""

from __future__ import annotations


class SdkError(Exception):
    """An error caused by the user's input (file, tensor, node, option).

    The message is a single line that names the offending file, tensor or node and
    says what is wrong. The CLI prints it as ``error: <message>`` and exits with 2.
    """


class QuantizationError(SdkError):
    """A node or tensor cannot be quantized as requested."""


class ModelLoadError(SdkError):
    """A model file is missing, unreadable, not ONNX, or invalid."""
