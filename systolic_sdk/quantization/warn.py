"""The quantizer's user-facing warnings (adapted options, enlarged scales, ignored keys)."""

from __future__ import annotations

import warnings


class QuantizationWarning(UserWarning):
    """Something was adapted or ignored; the output model is still valid."""


def warn(message: str) -> None:
    """Emit a QuantizationWarning with ``message``."""
    warnings.warn(message, QuantizationWarning, stacklevel=3)
