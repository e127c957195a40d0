"""Errors raised by the emulator's kernels: one clear line naming the node and the problem."""

from __future__ import annotations

from systolic_sdk.errors import SdkError


class EmulatorError(SdkError):
    """A node's inputs or attributes are invalid for its op (bad shapes, bad attributes)."""


class UnsupportedError(EmulatorError):
    """A valid node the emulator does not run: an element type it does not implement
    (float8, int4, int2, float4, ...) or a form the Systolic hardware cannot execute
    (non-zero zero point, per-channel scale, broadcasting on the accelerator)."""
