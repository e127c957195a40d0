"""The array model: tiles, cycles, utilization and accumulator-range flags, by hand."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from runtime_emulator.array import (
    FLAG_F32,
    FLAG_WRAP,
    ArrayConfig,
    conv_output_spatial,
    layer_stats,
    total_utilization,
)


def _conv(op: str = "QLinearConv", **attrs) -> object:
    ins = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"]
    return helper.make_node(op, ins, ["y"], name="conv", **attrs)


def _matmul() -> object:
    return helper.make_node(
        "QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], name="mm"
    )


def test_config_defaults_follow_the_spec() -> None:
    cfg = ArrayConfig()
    assert (cfg.dim, cfg.sp_bytes, cfg.acc_bytes) == (16, 256 * 1024, 64 * 1024)
    assert cfg.sp_rows == 4 * 4096  # 4 banks x 4096 rows of 16 bytes
    assert cfg.acc_rows == 1024  # 1024 rows of 16 int32
    with pytest.raises(ValueError, match="dim"):
        ArrayConfig(dim=0)


def test_conv_tiles_cycles_utilization_by_hand() -> None:
    # x [1,3,8,8], w [5,3,3,3], pads 1: out 8x8 -> I=64, K=27, J=5.
    node = _conv(pads=[1, 1, 1, 1])
    shapes = [(1, 3, 8, 8), (), (), (5, 3, 3, 3)]
    s = layer_stats(node, shapes)
    assert (s.I, s.J, s.K, s.groups) == (64, 5, 27, 1)
    assert s.output_shape == (1, 5, 8, 8)
    assert s.tiles == 4 * 1 * 2  # ceil(64/16) * ceil(5/16) * ceil(27/16)
    assert s.ideal_cycles == 64 * 5 * 27 / 256
    assert s.est_cycles == 8 * 16
    assert s.utilization == 33.75 / 128  # 64*5*27/256 = 33.75 of 128 cycles
    s4 = layer_stats(node, shapes, config=ArrayConfig(dim=4))
    assert s4.tiles == 16 * 2 * 7
    assert s4.ideal_cycles == 64 * 5 * 27 / 16
    assert s4.est_cycles == 224 * 4


def test_full_tiles_give_full_utilization() -> None:
    node = _conv()
    s = layer_stats(node, [(2, 32, 4, 4), (), (), (64, 32, 1, 1)])
    assert (s.I, s.J, s.K) == (32, 64, 32)
    assert s.tiles == 2 * 4 * 2
    assert s.utilization == 1.0
    assert s.ideal_cycles == s.est_cycles == 256


def test_grouped_and_nhwc_conv() -> None:
    # Depthwise 3x3, stride 2, pads 1, 16 channels on 9x9: out 5x5.
    dw = _conv(group=16, strides=[2, 2], pads=[1, 1, 1, 1])
    s = layer_stats(dw, [(1, 16, 9, 9), (), (), (16, 1, 3, 3)])
    assert (s.I, s.J, s.K, s.groups) == (25, 1, 9, 16)
    assert s.tiles == 16 * 2 * 1 * 1
    assert s.ideal_cycles == 16 * 25 * 9 / 256
    # The same conv in NHWC with HWIO weights maps identically.
    nhwc = _conv("QLinearConv_nhwc", group=16, strides=[2, 2], pads=[1, 1, 1, 1], maxpool=1)
    t = layer_stats(nhwc, [(1, 9, 9, 16), (), (), (3, 3, 1, 16)])
    assert (t.I, t.J, t.K, t.groups, t.tiles) == (s.I, s.J, s.K, s.groups, s.tiles)
    assert t.output_shape == (1, 5, 5, 16)


def test_conv_output_spatial_rules() -> None:
    assert conv_output_spatial([7, 7], [3, 3], {"auto_pad": b"SAME_UPPER", "strides": [2, 2]}) == (
        4,
        4,
    )
    assert conv_output_spatial([7, 8], [3, 3], {"auto_pad": b"VALID"}) == (5, 6)
    assert conv_output_spatial([10], [3], {"dilations": [2], "pads": [1, 1]}) == (8,)


def test_matmul_shapes() -> None:
    s = layer_stats(_matmul(), [(2, 10, 20), (), (), (20, 30)])
    assert (s.I, s.J, s.K, s.groups) == (20, 30, 20, 1)
    assert s.output_shape == (2, 10, 30)
    assert s.tiles == 2 * 2 * 2
    batched = layer_stats(_matmul(), [(3, 10, 20), (), (), (3, 20, 30)])
    assert (batched.I, batched.groups) == (10, 3)


def test_accumulator_bound_and_flags() -> None:
    node = _conv()
    w = np.full((2, 1024, 1, 1), 127, np.int8)
    w[1] = 1
    shapes = [(1, 1024, 1, 1), (), (), w.shape]
    # Channel 0: 1024 * 127 * 128 = 16,646,144 <= 2^24: exact in float32.
    s = layer_stats(node, shapes, {"w": w})
    assert s.acc_bound == 1024 * 127 * 128
    assert s.acc_flags == ()
    # A bias of 200,000 on channel 0 pushes it past 2^24.
    bias = np.array([200_000, 0], np.int32)
    s = layer_stats(node, shapes, {"w": w, "b": bias})
    assert s.acc_bound == 1024 * 127 * 128 + 200_000
    assert s.acc_flags == (FLAG_F32,)
    assert (s.channels_over_f32, s.channels_over_int32) == (1, 0)
    # A bias near 2^31 on channel 1 makes that channel wrap.
    bias = np.array([0, 2**31 - 1000], np.int32)
    s = layer_stats(node, shapes, {"w": w, "b": bias})
    assert s.acc_bound == 2**31 - 1000 + 1024 * 128
    assert s.acc_flags == (FLAG_F32, FLAG_WRAP)
    assert (s.channels_over_f32, s.channels_over_int32) == (1, 1)
    # A measured input range of 64 halves the weight term.
    s = layer_stats(node, shapes, {"w": w}, x_absmax=64)
    assert s.acc_bound == 1024 * 127 * 64


def test_accumulator_bound_with_zero_points() -> None:
    # uint8 activations (zp 128 -> |x - zp| <= 128), uint8 weights with per-channel zp.
    node = _conv()
    w = np.array([[[[0, 255]]], [[[10, 20]]]], np.uint8)  # [2,1,1,2]
    wz = np.array([128, 15], np.uint8)
    xz = np.array(100, np.uint8)  # |x - 100| <= 155
    s = layer_stats(node, [(1, 1, 1, 2), (), (), w.shape], {"w": w, "wz": wz, "xz": xz})
    assert s.x_absmax == 155
    assert s.acc_bound == max((128 + 127) * 155, (5 + 5) * 155)


def test_matmul_without_constant_b_uses_the_type_range() -> None:
    s = layer_stats(_matmul(), [(4, 8), (), (), (8, 2)])
    assert s.acc_bound == 8 * 128 * 128
    assert total_utilization([s]) == s.utilization


def test_non_array_op_is_refused() -> None:
    with pytest.raises(ValueError, match="Relu"):
        layer_stats(helper.make_node("Relu", ["x"], ["y"]), [(1,)])
