""".5 ties: where round-half-to-even (the hardware) and round-half-away-from-zero differ.

A rounding step of the datapath rounds float32 values ``v`` to integers with
:func:`runtime_emulator.datapath.rne`. To prove that a conformance case exercises ties (or
that it holds none), the reference pipeline is re-run under *rounding policies* that replace
``rne`` on chosen tie elements by the wrong rule, round half away from zero. A policy sees
each step's values and a mask of the elements whose float32 value equals the exact result
of the float operation that produced it (so a tie there is a tie of the exact arithmetic,
not one created by float32 rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from runtime_emulator import datapath as dp

#: ``policy(v, exact) -> rounded``: ``v`` float32 values, ``exact`` a bool mask (see above).
RoundingPolicy = Callable[[np.ndarray, np.ndarray], np.ndarray]


def is_tie(v: np.ndarray) -> np.ndarray:
    """Elements that are exactly halfway between two integers (``|v - trunc(v)| == 0.5``).

    ``v - trunc(v)`` is exact in binary floating point, so the test is exact.
    """
    v = np.asarray(v)
    with np.errstate(invalid="ignore"):
        return np.abs(v - np.trunc(v)) == 0.5


def differing_tie(v: np.ndarray) -> np.ndarray:
    """Ties whose two roundings differ: the integer part is even (``2.5``: 2 vs 3).

    (At an odd integer part, ``3.5``, both rules give 4.)
    """
    v = np.asarray(v)
    return is_tie(v) & (np.fmod(np.trunc(v), 2) == 0)


def half_away_where(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """:func:`dp.rne` except at the tie elements selected by ``mask``, which are rounded half
    away from zero (``trunc(v) + sign(v)``, exact). The wrong rule, used only as a probe."""
    v = np.asarray(v)
    ties = is_tie(v) & mask
    return np.where(ties, np.trunc(v) + np.sign(v), dp.rne(v))


def rne_policy(v: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """The hardware rule: round half to even everywhere."""
    return dp.rne(v)


def half_away_policy(v: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Round half away from zero at every tie."""
    return half_away_where(v, np.ones(np.shape(v), dtype=bool))


def half_away_exact_policy(v: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Round half away from zero only at ties of the exact arithmetic."""
    return half_away_where(v, exact)


def half_away_f32_policy(v: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Round half away from zero only at ties that float32 rounding created."""
    return half_away_where(v, ~np.asarray(exact, dtype=bool))


@dataclass
class RoundingStep:
    """One rounding step of a case: its float32 values and the exactness mask."""

    label: str
    values: np.ndarray
    exact: np.ndarray

    @property
    def ties(self) -> int:
        """How many elements are .5 ties (either kind, whatever their integer part)."""
        return int(np.count_nonzero(is_tie(self.values)))


def exact_product_mask(a: np.ndarray, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Elements where the float32 product ``v = f32(a * m)`` of float32 ``a`` and ``m`` is
    exact: the product of two float32 values is exact in float64 (48 significant bits)."""
    a64 = np.asarray(a, dtype=np.float32).astype(np.float64)
    m64 = np.asarray(m, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(v, dtype=np.float32).astype(np.float64) == a64 * m64


def exact_quotient_mask(x: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Elements where the float32 quotient ``v = f32(x / s)`` is exact, i.e. ``v * s == x``
    exactly (the product of two float32 values is exact in float64)."""
    v64 = np.asarray(v, dtype=np.float32).astype(np.float64)
    s64 = np.asarray(s, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return v64 * s64 == np.asarray(x, dtype=np.float32).astype(np.float64)
