"""Per-tensor int8 preparation (CLE, bias correction, GPTQ weights): agreement with fp32.

For each model, the int8 variants below are built as onnxruntime QDQ graphs with Systolic-style
parameters (spec section 7: symmetric int8, zero point 0; weights per tensor with
``scale = 2 max|w| / 254``; activations per tensor from a calibration min/max, narrowed
for Relu/Clip consumers; int32 biases at ``s_x * s_w``; every activation tensor, logits
included, passes through int8):

  (a) plain              per-tensor weights on the fp32 model
  (b) CLE                ``equalize`` first
  (c) CLE + BC           ``equalize`` then ``correct_bias`` (sequential)
  (d) per-channel        per-channel weights on the fp32 model (reference)
  (e) GPTQ               ``round_weights`` (int8 weights chosen on the calibration data,
                         snapped onto the per-tensor grid) first
  (f) recipe             ``per_tensor_recipe`` with its defaults (GPTQ weights, then
                         layerwise bias correction against the original weights)

and compared with the fp32 model on held-out inputs: top-1 and top-5 agreement and the
mean cosine of the logits. Calibration (activation ranges, bias-correction means) never
sees the evaluated inputs: for EfficientNet-Lite0 two folds of ``photos.npz`` (calibrate
on the 61 odd-numbered crops and evaluate the 61 even-numbered ones, then the reverse;
the 122 held-out predictions are scored together); for digits_cnn ``calib.npz`` (200)
and ``test.npz`` (1000). "pass s" is the time of the fp32 passes per fold (wall);
"fp32 max|dy|" the largest change of an fp32 logit made by the passes alone. The
activation ranges come from a min/max over the calibration inputs ("naive", spec
section 7) or from another ``systolic_sdk.calibration`` method (``--calibrator``).

    python bench/equalization.py [--model efficientnet_lite0|digits_cnn|all] [--relu6 MODE]
        [--calibrator naive|mse|entropy|percentile|...] [--extra]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator.datapath import F32, quantize_bias, rne, saturate
from systolic_sdk.calibration import ArrayReader, calibrate
from systolic_sdk.transforms import correct_bias, equalize, per_tensor_recipe, round_weights
from systolic_sdk.transforms._graph import GraphIndex, linear_layer

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Transpose"}


# ---------------------------------------------------------------------------------------------
# Data


Fold = tuple[np.ndarray, np.ndarray]  # (calibration inputs, evaluation inputs)


def load_efficientnet() -> tuple[onnx.ModelProto, list[Fold]]:
    """The model and two folds of photos.npz: odd crops calibrate, even evaluate, and back."""
    folder = MODELS / "efficientnet_lite0"
    spec = importlib.util.spec_from_file_location("effnet_preprocess", folder / "preprocess.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    x = mod.preprocess(np.load(folder / "photos.npz")["images"])
    return onnx.load(str(folder / "model.onnx")), [(x[1::2], x[0::2]), (x[0::2], x[1::2])]


def load_digits() -> tuple[onnx.ModelProto, list[Fold]]:
    """The shipped digits CNN: calib.npz calibrates, test.npz evaluates."""
    folder = MODELS / "digits_cnn"
    calib = np.load(folder / "calib.npz")["input"]
    test = np.load(folder / "test.npz")["input"]
    return onnx.load(str(folder / "model.onnx")), [(calib, test)]


# ---------------------------------------------------------------------------------------------
# Running and measuring


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray, batch: int = 16) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def agreement(y: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """top-1 / top-5 agreement with ``ref``'s top-1 and the mean cosine of the logits."""
    top1 = ref.argmax(axis=1)
    top5 = np.argsort(-y, axis=1)[:, :5]
    cos = np.sum(y * ref, axis=1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "top1": float(np.mean(y.argmax(axis=1) == top1)),
        "top5": float(np.mean(np.any(top5 == top1[:, None], axis=1))),
        "cos": float(np.mean(cos)),
        "maxdiff": float(np.max(np.abs(y - ref))),
    }


def tensor_ranges(model: onnx.ModelProto, x: np.ndarray, batch: int = 16) -> dict[str, tuple]:
    """Global (min, max) of every float tensor that is a graph input or a node output."""
    probe = copy.deepcopy(model)
    outs = {o.name for o in probe.graph.output}
    first = probe.graph.input[0].name
    names = []
    for node in probe.graph.node:
        for o in node.output:
            if o and node.op_type not in ("Constant", "Shape"):
                names.append(o)
                if o not in outs:
                    probe.graph.output.append(
                        helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                    )
    sess = session(probe)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for i in range(0, len(x), batch):
        values = [x[i : i + batch]] + sess.run(names, {first: x[i : i + batch]})
        for n, v in zip([first, *names], values, strict=True):
            if v.dtype != np.float32 or v.size == 0:
                continue
            lo[n] = min(lo.get(n, np.inf), float(v.min()))
            hi[n] = max(hi.get(n, -np.inf), float(v.max()))
    return {n: (lo[n], hi[n]) for n in lo}


# ---------------------------------------------------------------------------------------------
# QDQ graphs with Systolic-style parameters


def activation_scale(index: GraphIndex, name: str, rng: tuple[float, float]) -> np.float32:
    """Spec section 7: narrowed (rmin, rmax), symmetric int8 scale ``f32(f32(m) / 127)``."""
    rmin, rmax = rng
    users = index.consumers.get(name, [])
    if len(users) == 1 and name not in index.graph_outputs:
        user = users[0]
        if user.op_type == "Relu":
            rmin = max(rmin, 0.0)
        elif user.op_type == "Clip" and user.input[0] == name:
            lo_hi = [index.constant(n) if n else None for n in list(user.input[1:3])]
            if len(lo_hi) > 0 and lo_hi[0] is not None:
                rmin = max(rmin, float(lo_hi[0]))
            if len(lo_hi) > 1 and lo_hi[1] is not None:
                rmax = min(rmax, float(lo_hi[1]))
    rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
    m = max(abs(rmin), abs(rmax))
    return F32(1.0) if m <= 1e-8 else np.divide(F32(m), F32(127), dtype=F32)


def activation_scales(model: onnx.ModelProto, x: np.ndarray) -> dict[str, float]:
    """The int8 scale of every activation ``qdq_model`` quantizes, from ranges on ``x``."""
    index = GraphIndex(model)
    out = {}
    for name, rng in tensor_ranges(model, x).items():
        producer = index.producer.get(name)
        if producer is None or producer.op_type not in PASS_THROUGH:
            out[name] = float(activation_scale(index, name, rng))
    return out


def weight_params(
    w: np.ndarray, axis: int | None, floor: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale): spec section 7 per tensor, or the same per channel.

    ``floor``: a lower bound on each per-channel scale (so that the int32 bias fits).
    """
    w64 = w.astype(np.float64)
    if axis is None:
        m = np.array(np.abs(w64).max())
        shape: tuple = ()
    else:
        m = np.abs(np.moveaxis(w64, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
        shape = tuple(w.shape[axis] if i == axis else 1 for i in range(w.ndim))
    scale = np.where(m > 0, 2.0 * m / 254.0, 1.0)
    if floor is not None:
        scale = np.maximum(scale, floor)
    q = saturate(rne(w64 / scale.reshape(shape)), np.int8)
    return q, scale.astype(F32)


def qdq_model(
    model: onnx.ModelProto, ranges: dict[str, tuple[float, float]], per_channel: bool
) -> onnx.ModelProto:
    """The model with int8 Q/DQ on every float activation and int8/int32 weights/biases."""
    out = copy.deepcopy(model)
    index = GraphIndex(out)
    g = out.graph
    scales: dict[str, np.float32] = {}
    for name, rng in ranges.items():
        producer = index.producer.get(name)
        if producer is not None and producer.op_type in PASS_THROUGH:
            continue  # same values (and, on the hardware, the same scale) as its input
        scales[name] = activation_scale(index, name, rng)

    new_nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}

    outputs = {o.name for o in g.output}

    def add_qdq(src: str, dst: str, scale: np.float32) -> None:
        s = numpy_helper.from_array(np.asarray(scale, F32), f"{dst}__s")
        z = numpy_helper.from_array(np.zeros((), np.int8), f"{dst}__z")
        inits.extend([s, z])
        new_nodes.append(helper.make_node("QuantizeLinear", [src, s.name, z.name], [f"{dst}__q"]))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{dst}__q", s.name, z.name], [dst]))

    for inp in g.input:
        if inp.name in scales:
            add_qdq(inp.name, f"{inp.name}__dq", scales[inp.name])
            rename[inp.name] = f"{inp.name}__dq"
    for node in g.node:
        node_copy = copy.deepcopy(node)
        for i, n in enumerate(node_copy.input):
            node_copy.input[i] = rename.get(n, n)
        layer = linear_layer(index, node)
        if layer is not None:
            w = numpy_helper.to_array(index.inits[layer.weight])
            axis = layer.out_axis if per_channel else None
            x_name = node.input[0]
            s_x = scales.get(x_name) or scales.get(_source(index, x_name))
            b = numpy_helper.to_array(index.inits[layer.bias]) if layer.bias else None
            floor = None
            if per_channel and b is not None and s_x is not None and b.ndim == 1:
                floor = np.abs(b.astype(np.float64)) / (float(s_x) * 2.0**30)
            q, s_w = weight_params(w, axis, floor)
            wq = numpy_helper.from_array(q, f"{layer.weight}__q")
            ws = numpy_helper.from_array(s_w, f"{layer.weight}__qs")
            wz = numpy_helper.from_array(np.zeros(s_w.shape, np.int8), f"{layer.weight}__qz")
            inits.extend([wq, ws, wz])
            kw = {"axis": axis} if axis is not None else {}
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear", [wq.name, ws.name, wz.name], [f"{layer.weight}__w"], **kw
                )
            )
            node_copy.input[1] = f"{layer.weight}__w"
            if b is not None and s_x is not None:
                if b.ndim == 1 and b.size == w.shape[layer.out_axis]:
                    bq, bs = quantize_bias(b, s_x, s_w)
                    bsc = bs if per_channel else np.asarray(bs.reshape(-1)[0], F32)
                    bqi = numpy_helper.from_array(bq, f"{layer.bias}__q")
                    bsi = numpy_helper.from_array(bsc, f"{layer.bias}__qs")
                    bzi = numpy_helper.from_array(
                        np.zeros(bsc.shape, np.int32), f"{layer.bias}__qz"
                    )
                    inits.extend([bqi, bsi, bzi])
                    kwb = {"axis": 0} if per_channel else {}
                    new_nodes.append(
                        helper.make_node(
                            "DequantizeLinear",
                            [bqi.name, bsi.name, bzi.name],
                            [f"{layer.bias}__b"],
                            **kwb,
                        )
                    )
                    node_copy.input[2] = f"{layer.bias}__b"
        new_nodes.append(node_copy)
        for j, o in enumerate(node.output):
            if o not in scales:
                continue
            if o in outputs:  # the graph output keeps its name: the DQ writes it
                node_copy.output[j] = f"{o}__pre"
                add_qdq(f"{o}__pre", o, scales[o])
            else:
                add_qdq(o, f"{o}__dq", scales[o])
                rename[o] = f"{o}__dq"
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(inits)
    return out


def _source(index: GraphIndex, name: str) -> str:
    """Walk back through pass-through ops to the tensor whose scale ``name`` carries."""
    while (p := index.producer.get(name)) is not None and p.op_type in PASS_THROUGH:
        name = p.input[0]
    return name


# ---------------------------------------------------------------------------------------------
# The benchmark


def variants(relu6: str, min_range: float, extra: bool) -> dict[str, tuple[Callable, bool]]:
    """name -> (fp32 transform(model, calib) -> model, per-channel weights)."""

    def cle(m: onnx.ModelProto, mode: str = relu6) -> onnx.ModelProto:
        return equalize(m, relu6=mode, min_range=min_range)  # type: ignore[arg-type]

    todo: dict[str, tuple[Callable, bool]] = {
        "(a) plain": (lambda m, c: m, False),
        "(b) CLE": (lambda m, c: cle(m), False),
        "(c) CLE + BC": (lambda m, c: correct_bias(cle(m), c), False),
        "(d) per-channel": (lambda m, c: m, True),
        "(e) GPTQ": (lambda m, c: round_weights(m, c), False),
        "(f) recipe": (lambda m, c: per_tensor_recipe(m, c), False),
    }

    def bc_act(m: onnx.ModelProto, c: np.ndarray) -> onnx.ModelProto:
        return correct_bias(m, c, activation_scales=activation_scales(m, c))

    if extra:
        todo["CLE + BC, act. in loop"] = (lambda m, c: bc_act(cle(m), c), False)
        todo["BC only, act. in loop"] = (bc_act, False)
        todo["BC only"] = (lambda m, c: correct_bias(m, c), False)
        todo["CLE + BC layerwise"] = (lambda m, c: correct_bias(cle(m), c, sequential=False), False)
        todo["CLE min_range=0"] = (
            lambda m, c: equalize(m, relu6=relu6, min_range=0.0),  # type: ignore[arg-type]
            False,
        )
        for mode in ("max", "relu", "keep"):
            todo[f"CLE relu6={mode}"] = (lambda m, c, mode=mode: cle(m, mode), False)
        todo["nearest, MSE clip"] = (
            lambda m, c: round_weights(m, c, rounding="nearest", clip="mse"),
            False,
        )
        todo["GPTQ, MSE clip"] = (lambda m, c: round_weights(m, c, clip="mse"), False)
        todo["recipe, MSE clip"] = (
            lambda m, c: per_tensor_recipe(m, c, weight_clip="mse"),
            False,
        )
        todo["recipe + CLE"] = (lambda m, c: per_tensor_recipe(m, c, equalization=True), False)
    return todo


def activation_ranges(
    model: onnx.ModelProto, calib: np.ndarray, calibrator: str
) -> dict[str, tuple[float, float]]:
    """Every activation's (rmin, rmax) on ``calib``: min/max, or a calibration method."""
    ranges = tensor_ranges(model, calib)
    if calibrator == "naive":
        return ranges
    name = model.graph.input[0].name
    found = calibrate(model, ArrayReader({name: calib}, 8), method=calibrator)
    return {k: found.get(k, v) for k, v in ranges.items()}


def bench_model(
    name: str, relu6: str, min_range: float, extra: bool, calibrator: str = "naive"
) -> list[tuple]:
    """One row per variant; predictions of all folds are pooled before scoring."""
    model, folds = load_efficientnet() if name == "efficientnet_lite0" else load_digits()
    refs = [run(model, evalx) for _, evalx in folds]
    ref = np.concatenate(refs)
    rows = []
    for label, (transform, per_channel) in variants(relu6, min_range, extra).items():
        ys, fps, t_pass = [], [], 0.0
        for calib, evalx in folds:
            t0 = time.perf_counter()
            fp = transform(model, calib)
            t_pass += time.perf_counter() - t0
            fps.append(run(fp, evalx))
            q = qdq_model(fp, activation_ranges(fp, calib, calibrator), per_channel)
            onnx.checker.check_model(q)
            ys.append(run(q, evalx))
        s = agreement(np.concatenate(ys), ref)
        dy = agreement(np.concatenate(fps), ref)["maxdiff"]
        rows.append((name, label, s["top1"], s["top5"], s["cos"], dy, t_pass / len(folds)))
        print(_fmt(rows[-1]), flush=True)
    return rows


HEAD = ("model", "variant", "top-1", "top-5", "cosine", "fp32 max|dy|", "pass s")


def _fmt(row: tuple) -> str:
    name, label, t1, t5, cos, dy, t = row
    return (
        f"{name:18s} {label:22s} {100 * t1:6.1f}% {100 * t5:6.1f}% {cos:8.4f} {dy:11.2e} {t:7.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="all", choices=["all", "efficientnet_lite0", "digits_cnn"])
    p.add_argument("--relu6", default="exact", help="equalize(relu6=...) mode")
    p.add_argument("--min-range", type=float, default=1e-2, help="equalize(min_range=...)")
    p.add_argument("--extra", action="store_true", help="also the variants tried without gain")
    p.add_argument(
        "--calibrator", default="naive", help="activation ranges: naive (min/max) or a method"
    )
    args = p.parse_args(argv)
    names = ["digits_cnn", "efficientnet_lite0"] if args.model == "all" else [args.model]
    widths = (18, 22, 7, 7, 8, 11, 7)
    print(
        " ".join(
            f"{h:{'<' if i < 2 else '>'}{w}s}"
            for i, (h, w) in enumerate(zip(HEAD, widths, strict=True))
        )
    )
    for name in names:
        bench_model(name, args.relu6, args.min_range, args.extra, args.calibrator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
