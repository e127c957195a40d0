"""QLinearConv_nhwc and QLinearMatMul layers of small Systolic graphs, random tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator import datapath as dp
from runtime_emulator.kernels import KernelContext, lookup
from systolic_sdk.vectors import VectorError, export_vectors


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _model(node: onnx.NodeProto, inits: list, x_shape: list[int], y_shape: list[int]):
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT8, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    helper.set_model_props(model, {"systolic_sdk.backend": "systolic"})
    return model


def _nhwc_model(rng: np.random.Generator, **extra: object) -> onnx.ModelProto:
    w = rng.integers(-127, 128, (3, 3, 4, 6), dtype=np.int8)  # HWIO
    b = rng.integers(-3000, 3000, (6,), dtype=np.int32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             _scalar("sx", 0.02), _scalar("sw", 0.01), _scalar("sy", 0.07)]  # fmt: skip
    node = helper.make_node(
        "QLinearConv_nhwc",
        ["x", "sx", "", "w", "sw", "", "sy", "", "b"],
        ["y"],
        name="conv_nhwc",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        strides=[2, 2],
        relu=1,
        **extra,
    )
    return _model(node, inits, ["n", 7, 7, 4], ["n", 4, 4, 6])


def _export(tmp_path: Path, model: onnx.ModelProto, x: np.ndarray) -> tuple[Path, dict]:
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "v"
    man = export_vectors(tmp_path / "m.onnx", tmp_path / "x.npy", out, ["npy"], samples=2)
    assert json.loads((out / "manifest.json").read_text()) == man
    return out, man


def _load(folder: Path, layer: dict) -> dict[str, np.ndarray]:
    return {f["tensor"]: np.load(folder / f["path"]) for f in layer["files"]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nhwc_conv(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (2, 7, 7, 4), dtype=np.int8)
    folder, man = _export(tmp_path, _nhwc_model(rng), x)
    (layer,) = man["layers"]
    assert "(kh, kw, c)" in layer["tensors"]["weights"]["layout"]
    v = _load(folder, layer)
    assert np.array_equal(v["input"], x)
    ins = [v["input"], v["x_scale"], None, v["weights_hwio"], v["w_scale"], None,
           v["y_scale"], None, v["bias"]]  # fmt: skip
    (y,) = lookup("", "QLinearConv_nhwc")(ins, layer["attributes"], KernelContext())
    assert np.array_equal(y, v["output"])
    # int64 reference: NHWC patches ordered (kh, kw, c) times the K x J matrix
    xp = np.pad(x.astype(np.int64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::2, ::2]
    cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(2, 4, 4, -1)
    acc = dp.wrap32(cols @ v["weights"].astype(np.int64) + v["bias"])
    assert np.array_equal(acc, v["acc"])
    assert np.array_equal(dp.requantize(acc, v["multiplier"], relu=True), v["output"])


def test_nhwc_fused_pool_refused(tmp_path: Path) -> None:
    model = _nhwc_model(np.random.default_rng(0), maxpool=1, pool_kernel_shape=[2, 2],
                        pool_strides=[2, 2], pool_pads=[0, 0, 0, 0])  # fmt: skip
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 2
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "x.npy", np.ones((1, 7, 7, 4), np.int8))
    with pytest.raises(VectorError, match="fused max pooling"):
        export_vectors(tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "v")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "x.npy"]


def test_matmul(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    b = rng.integers(-127, 128, (40, 9), dtype=np.int8)
    inits = [numpy_helper.from_array(b, "b"), _scalar("sa", 0.05), _scalar("sb", 0.003),
             _scalar("sy", 0.11)]  # fmt: skip
    node = helper.make_node("QLinearMatMul", ["x", "sa", "", "b", "sb", "", "sy", ""], ["y"],
                            name="mm")  # fmt: skip
    x = rng.integers(-128, 128, (3, 5, 40), dtype=np.int8)
    folder, man = _export(tmp_path, _model(node, inits, ["n", 5, 40], ["n", 5, 9]), x)
    (layer,) = man["layers"]
    v = _load(folder, layer)
    assert v["input"].shape == (2, 5, 40) and np.array_equal(v["weights"], b)
    acc = dp.wrap32(v["input"].astype(np.int64) @ b.astype(np.int64))
    assert np.array_equal(acc, v["acc"])
    assert np.array_equal(dp.requantize(acc, v["multiplier"]), v["output"])
    ins = [v["input"], v["x_scale"], None, v["weights"], v["w_scale"], None, v["y_scale"], None]
    (y,) = lookup("", "QLinearMatMul")(ins, {}, KernelContext())
    assert np.array_equal(y, v["output"])
