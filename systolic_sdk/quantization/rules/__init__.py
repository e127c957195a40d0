"""Per-op quantization rules, one small module per op family.

``default_rules()`` maps op types to the rule instances the CPU backend uses; a backend
may copy the mapping and replace or drop entries.
"""

from __future__ import annotations

from systolic_sdk.quantization.rules.activation import ActivationRule
from systolic_sdk.quantization.rules.base import OpRule
from systolic_sdk.quantization.rules.concat import ConcatRule
from systolic_sdk.quantization.rules.conv import ConvRule
from systolic_sdk.quantization.rules.elementwise import BinaryRule
from systolic_sdk.quantization.rules.matmul import GemmRule, MatMulRule
from systolic_sdk.quantization.rules.passthrough import PassThroughRule
from systolic_sdk.quantization.rules.pooling import AveragePoolRule, MaxPoolRule

RULE_CLASSES: tuple[type[OpRule], ...] = (
    ConvRule,
    MatMulRule,
    GemmRule,
    BinaryRule,
    ActivationRule,
    MaxPoolRule,
    AveragePoolRule,
    ConcatRule,
    PassThroughRule,
)


def default_rules() -> dict[str, OpRule]:
    """A fresh op_type -> rule mapping covering every rule class above."""
    rules: dict[str, OpRule] = {}
    for cls in RULE_CLASSES:
        rule = cls()
        for op in cls.op_types:
            rules[op] = rule
    return rules


__all__ = ["OpRule", "default_rules", "RULE_CLASSES"]
