"""The exported vectors of the shipped model, fed back layer by layer, reproduce every
accumulator and output exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from runtime_emulator import datapath as dp
from runtime_emulator import run
from runtime_emulator.kernels import KernelContext, lookup


def _files(layer: dict, fmt: str) -> dict[str, Path]:
    return {f["tensor"]: f["path"] for f in layer["files"] if f["format"] == fmt}


def _load(folder: Path, layer: dict, fmt: str = "npy") -> dict[str, np.ndarray]:
    out = {}
    for key, rel in _files(layer, fmt).items():
        if fmt == "npy":
            out[key] = np.load(folder / rel, allow_pickle=False)
        else:
            t = onnx.TensorProto()
            t.ParseFromString((folder / rel).read_bytes())
            assert t.name == key
            out[key] = numpy_helper.to_array(t)
    return out


def _im2col_acc(x: np.ndarray, w_kj: np.ndarray, bias: np.ndarray, attrs: dict) -> np.ndarray:
    """int64 reference: patches ordered (c, kh, kw) times the exported K x J matrix."""
    group = int(attrs.get("group", 1))
    assert all(d == 1 for d in attrs.get("dilations", [1, 1]))
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])])
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    n, c, oh, ow = win.shape[:4]
    mats = w_kj.reshape(group, *w_kj.shape[-2:]).astype(np.int64)
    cg = c // group
    outs = []
    for g in range(group):
        cols = win[:, g * cg : (g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, -1)
        outs.append(cols @ mats[g])
    acc = np.concatenate(outs, axis=-1) + bias.astype(np.int64)
    return dp.wrap32(acc.transpose(0, 3, 1, 2))


def test_every_layer_reproduces_exactly(exported: tuple[Path, dict], export_samples: int) -> None:
    folder, man = exported
    assert man["samples"] == export_samples
    ops = [layer["op"] for layer in man["layers"]]
    assert ops.count("QLinearConv") == 6 and ops.count("QLinearAdd") == 1
    for layer in man["layers"]:
        v = _load(folder, layer)
        pb = _load(folder, layer, "pb")
        assert v.keys() == pb.keys()
        for key in v:
            assert v[key].dtype == pb[key].dtype and np.array_equal(v[key], pb[key]), key
        attrs = layer["attributes"]
        ctx = KernelContext(target="systolic", node_name=layer["name"])
        kernel = lookup("com.microsoft" if layer["op"] == "QLinearAdd" else "", layer["op"])
        if layer["op"] == "QLinearAdd":
            ins = [v["a"], v["a_scale"], None, v["b"], v["b_scale"], None, v["c_scale"], None]
            (y,) = kernel(ins, attrs, ctx)
            assert y.dtype == np.int8 and np.array_equal(y, v["output"]), layer["name"]
            for side in ("a", "b"):
                ratio = np.divide(v[f"{side}_scale"], v["c_scale"], dtype=np.float32)
                assert ratio.tobytes() == v[f"{side}_multiplier"].tobytes()
                again = dp.rescale_saturate(v[side], v[f"{side}_scale"], v["c_scale"])
                assert np.array_equal(again, v[f"{side}_rescaled"])
            total = v["a_rescaled"].astype(np.int16) + v["b_rescaled"]
            low = 0 if attrs.get("relu") else -128
            assert np.array_equal(np.clip(total, low, 127), v["output"])
            continue
        ins = [v["input"], v["x_scale"], None, v["weights_oihw"], v["w_scale"], None,
               v["y_scale"], None, v["bias"]]  # fmt: skip
        (y,) = kernel(ins, attrs, ctx)
        assert y.dtype == np.int8 and np.array_equal(y, v["output"]), layer["name"]
        m = dp.requant_multiplier(v["x_scale"], v["w_scale"], v["y_scale"])
        assert m.tobytes() == v["multiplier"].tobytes()
        assert layer["scalars"]["multiplier"]["bits"] == f"0x{int(m.view(np.uint32)):08x}"
        acc = _im2col_acc(v["input"], v["weights"], v["bias"], attrs)
        assert acc.dtype == v["acc"].dtype == np.int32
        assert np.array_equal(acc, v["acc"]), layer["name"]
        y2 = dp.requantize(v["acc"], v["multiplier"], np.int8, 0, relu=bool(attrs.get("relu")))
        assert np.array_equal(y2, v["output"]), layer["name"]
        w = v["weights_oihw"]
        assert v["weights"].size == w.size
        assert layer["tensors"]["weights"]["shape"][-2] == int(np.prod(w.shape[1:]))


def test_consecutive_layers_chain(exported: tuple[Path, dict]) -> None:
    """conv2's exported input is conv1's exported output after the 2x2 max pooling."""
    folder, man = exported
    by_name = {layer["name"]: _load(folder, layer) for layer in man["layers"]}
    y1 = by_name["/conv1/Conv"]["output"]
    pooled = y1.reshape(*y1.shape[:2], 14, 2, 14, 2).max(axis=(3, 5))
    assert np.array_equal(pooled, by_name["/conv2/Conv"]["input"])


def test_graph_output_matches_last_layer(
    exported: tuple[Path, dict],
    systolic_digits: Path,
    digits_test: tuple[np.ndarray, np.ndarray],
    export_samples: int,
) -> None:
    folder, man = exported
    feeds = {"input": digits_test[0][:export_samples]}
    logits = run(str(systolic_digits), feeds, target="systolic")["logits"]
    (entry,) = man["graph_outputs"]
    saved = np.load(folder / next(f["path"] for f in entry["files"] if f["format"] == "npy"))
    assert saved.dtype == logits.dtype and np.array_equal(saved, logits)
    last = _load(folder, man["layers"][-1])
    deq = dp.dequantize_linear(last["output"].reshape(logits.shape), last["y_scale"])
    assert np.array_equal(deq, logits)
