"""The cause classifier on hand-built accumulators."""

from __future__ import annotations

import numpy as np
import pytest

from runtime_emulator import datapath as dp
from runtime_emulator.validate import (
    LARGE_ACC,
    SATURATION,
    TIE,
    UNEXPLAINED,
    classify_element,
    sqnr_db,
)


def test_tie() -> None:
    m = float(dp.requant_multiplier(0.5, 1.0, 1.0))
    assert float(dp.scale_accumulator(np.array(5), m)) == 2.5
    assert classify_element(5, m) == TIE
    assert classify_element(-7, m) == TIE


def test_saturation() -> None:
    assert classify_element(1000, 0.5) == SATURATION
    assert classify_element(-1000, 0.5) == SATURATION
    # The zero point moves the bound: 120 + 10 > 127.
    assert classify_element(240, 0.5, 10) == SATURATION
    assert classify_element(240, 0.5) == UNEXPLAINED


def test_large_accumulator() -> None:
    acc = 2**24 + 1
    assert classify_element(acc, 1e-6) == LARGE_ACC
    assert classify_element(-acc, 1e-6) == LARGE_ACC
    assert classify_element(2**24 - 1, 1e-6) != LARGE_ACC


def test_relu_hides_negative_causes() -> None:
    assert classify_element(-5, 0.5) == TIE
    assert classify_element(-5, 0.5, relu=True) == UNEXPLAINED
    assert classify_element(-1000, 0.5, relu=True) == UNEXPLAINED
    assert classify_element(5, 0.5, relu=True) == TIE


def test_unexplained() -> None:
    assert classify_element(7, 0.3) == UNEXPLAINED


@pytest.mark.parametrize("seed", range(3))
def test_sqnr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(1000).astype(np.float32)
    noise = (0.1 * rng.standard_normal(1000)).astype(np.float32)
    expected = 10 * np.log10(np.sum(ref.astype(float) ** 2) / np.sum(noise.astype(float) ** 2))
    assert sqnr_db(ref, ref + noise) == pytest.approx(expected, rel=1e-4)
    assert sqnr_db(ref, ref) == float("inf")


def _add_node(a: int, b: int, s_a: float, s_b: float, s_c: float):
    from onnx import helper

    node = helper.make_node(
        "QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"], domain="com.microsoft"
    )
    f = np.float32
    env = {
        "a": np.array([a], np.int8), "sa": np.array(s_a, f), "za": np.array(0, np.int8),
        "b": np.array([b], np.int8), "sb": np.array(s_b, f), "zb": np.array(0, np.int8),
        "sc": np.array(s_c, f), "zc": np.array(0, np.int8),
    }  # fmt: skip
    return node, env


def test_qlinear_add_causes() -> None:
    from runtime_emulator.validate import _classify_add

    # 5 * 0.5 = 2.5 exactly: a tie on the first input's rescale.
    assert _classify_add(*_add_node(5, 2, 0.5, 1.0, 1.0), (0,)) == TIE
    # 100 + 100: each rescale fits, the sum saturates.
    assert _classify_add(*_add_node(100, 100, 1.0, 1.0, 1.0), (0,)) == SATURATION
    assert _classify_add(*_add_node(3, 4, 1.0, 1.0, 1.0), (0,)) == UNEXPLAINED


def test_saturation_follows_the_output_type():
    """uint8 outputs saturate at 0 and 255 (with their zero point), not at -128 and 127."""
    import numpy as np

    assert classify_element(10, 1.0, 128, dtype=np.uint8) == UNEXPLAINED  # 138: in range
    assert classify_element(200, 1.0, 128, dtype=np.uint8) == SATURATION  # 328 > 255
    assert classify_element(-200, 1.0, 128, dtype=np.uint8) == SATURATION  # -72 < 0
    assert classify_element(10, 1.0, 128) == SATURATION  # int8: 138 > 127
