"""The Systolic backend end to end, through the command line a user runs.

For each model and layout: ``systolic-quantize quantize --backend systolic`` (with the
default fp32 preparation, GPTQ weight rounding and bias correction measured layer by
layer in the int8 model; in the first layout also with both measured on the fp32 model
(extra option ``SystolicInt8InLoop=False``, which the command line does not expose: that
variant calls ``api.quantize_static`` in a child process), with cross-layer equalization
and bias correction, and with no preparation),
then ``systolic-quantize validate`` on held-out inputs: bit-exactness of every traced
tensor against onnxruntime on the standard-ONNX lowering, top-1 agreement and SQNR of the
logits against fp32. onnxruntime's own static quantizer (QDQ, int8, MinMax) per tensor and
per channel is scored on the same folds, as the anchor.

EfficientNet-Lite0 runs two folds of ``models/efficientnet_lite0/photos.npz`` (calibrate
on the 61 odd-numbered crops, evaluate on the 61 even ones, and the reverse; the 122
held-out predictions are scored together); digits_cnn calibrates on ``calib.npz`` and
evaluates on ``test.npz``.

    python bench/systolic_e2e.py [--models digits_cnn efficientnet_lite0] [--markdown]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
CLI = [sys.executable, "-m", "systolic_sdk.cli"]


@dataclass
class Fold:
    calib: np.ndarray
    evaluate: np.ndarray


def _folds(name: str) -> tuple[Path, str, list[Fold]]:
    if name == "digits_cnn":
        root = MODELS / "digits_cnn"
        calib = np.load(root / "calib.npz")["input"]
        test = np.load(root / "test.npz")["input"]
        return root / "model.onnx", "input", [Fold(calib, test)]
    root = MODELS / "efficientnet_lite0"
    spec = importlib.util.spec_from_file_location("effnet_prep", root / "preprocess.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = mod.preprocess(np.load(root / "photos.npz")["images"])
    import onnx

    input_name = onnx.load(root / "model.onnx", load_external_data=False).graph.input[0].name
    odd, even = x[1::2], x[0::2]
    return root / "model.onnx", input_name, [Fold(odd, even), Fold(even, odd)]


def _cli(args: list[str]) -> float:
    t = time.perf_counter()
    if "--api-extra" in args:  # an extra option the command line does not expose
        args = [sys.executable, __file__, "--quantize-api", *args]
    else:
        args = CLI + args
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - t


def _logits(path: Path, input_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [sess.run(None, {input_name: x[i : i + 50]})[0] for i in range(0, len(x), 50)]
    )


#: (label, quantize flags): the default recipe, and variants of the fp32 preparation.
VARIANTS = {
    "default": ("GPTQ + BC in the int8 model (default)", []),
    "fp32": ("GPTQ + BC on fp32", ["--api-extra", json.dumps({"SystolicInt8InLoop": False})]),
    "cle": ("CLE + BC", ["--equalization", "--no-weight-rounding"]),
    "plain": ("plain", ["--no-weight-rounding", "--no-bias-correction"]),
}


def ours(model: Path, input_name: str, folds: list[Fold], layout: str, prep: str, tmp: Path):
    """Quantize and validate through the CLI on every fold; pooled figures."""
    agree, total, sqnr, exact, tensors, t_q, t_v = 0.0, 0, [], True, "", 0.0, 0.0
    for k, fold in enumerate(folds):
        calib, data = tmp / f"calib{k}.npz", tmp / f"eval{k}.npz"
        np.savez(calib, **{input_name: fold.calib})
        np.savez(data, **{input_name: fold.evaluate})
        out, report = tmp / f"q_{layout}_{prep}_{k}.onnx", tmp / f"r_{layout}_{prep}_{k}.json"
        flags = VARIANTS[prep][1]
        t_q += _cli(
            [
                "quantize",
                str(model),
                "-o",
                str(out),
                "--backend",
                "systolic",
                "--layout",
                layout,
                "--calibration-data",
                str(calib),
                "-q",
                *flags,
            ]
        )
        t_v += _cli(
            [
                "validate",
                str(out),
                "--fp32",
                str(model),
                "--data",
                str(data),
                "--json",
                str(report),
                "--quiet",
            ]
        )
        r = json.loads(report.read_text())
        o = r["outputs"][0]
        n = len(fold.evaluate)
        agree += o["top1_agreement"] * n
        total += n
        sqnr.append(float(o["sqnr_db"]))
        exact &= bool(r["bit_exact"])
        n_exact = sum(t["bit_exact"] for t in r["tensors"])
        tensors = f"{n_exact}/{len(r['tensors'])}"
    return {
        "top1": agree / total,
        "sqnr": float(np.mean(sqnr)),
        "bit_exact": "yes" if exact else "NO",
        "tensors": tensors,
        "quantize_s": t_q / len(folds),
        "validate_s": t_v / len(folds),
    }


def onnxruntime_anchor(
    model: Path, input_name: str, folds: list[Fold], per_channel: bool, tmp: Path
):
    """onnxruntime's quantize_static (QDQ, int8/int8, MinMax), scored in onnxruntime."""
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" advice
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray) -> None:
            self.it = iter(range(len(x)))
            self.x = x

        def get_next(self):
            i = next(self.it, None)
            return None if i is None else {input_name: self.x[i : i + 1]}

    agree, total, sqnr, t_q = 0.0, 0, [], 0.0
    for k, fold in enumerate(folds):
        out = tmp / f"ort_{per_channel}_{k}.onnx"
        t = time.perf_counter()
        quantize_static(
            str(model),
            str(out),
            Reader(fold.calib),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        t_q += time.perf_counter() - t
        ref = _logits(model, input_name, fold.evaluate)
        got = _logits(out, input_name, fold.evaluate)
        agree += float((ref.argmax(1) == got.argmax(1)).sum())
        total += len(ref)
        noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
        sqnr.append(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / max(noise, 1e-30)))
    return {"top1": agree / total, "sqnr": float(np.mean(sqnr)), "quantize_s": t_q / len(folds)}


def _quantize_api(argv: list[str]) -> int:
    """``quantize MODEL -o OUT --backend systolic --layout L --calibration-data NPZ -q
    --api-extra JSON``, through ``api.quantize_static`` with the extra options."""
    from systolic_sdk import api
    from systolic_sdk.calibration import open_source
    from systolic_sdk.graph.io import load_model

    model, out = Path(argv[1]), Path(argv[argv.index("-o") + 1])
    extra = json.loads(argv[argv.index("--api-extra") + 1])
    extra["SystolicLayout"] = argv[argv.index("--layout") + 1]
    fp32 = load_model(model)
    reader = open_source(Path(argv[argv.index("--calibration-data") + 1]), fp32)
    reader.collect_options = {"progress": False}
    q = api.quantize_static(
        fp32, None, reader, quant_format="QOperator", backend="systolic", extra_options=extra
    )
    api.save_output(q, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--quantize-api"]:
        return _quantize_api(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["digits_cnn", "efficientnet_lite0"])
    ap.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="fp32 preparations to run in the first layout (the others run the default)",
    )
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    header = [
        "model",
        "configuration",
        "top-1 agreement",
        "SQNR dB",
        "bit-exact",
        "tensors",
        "quantize s",
        "validate s",
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="systolic-e2e-") as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models:
            model, input_name, folds = _folds(name)
            for layout in args.layouts:
                for prep in args.variants if layout == args.layouts[0] else ["default"]:
                    r = ours(model, input_name, folds, layout, prep, tmp)
                    what = f"systolic {layout.upper()}, {VARIANTS[prep][0]}"
                    rows.append(
                        [
                            name,
                            what,
                            f"{100 * r['top1']:.1f}%",
                            f"{r['sqnr']:.2f}",
                            r["bit_exact"],
                            r["tensors"],
                            f"{r['quantize_s']:.1f}",
                            f"{r['validate_s']:.1f}",
                        ]
                    )
                    print(*rows[-1], sep=" | ", flush=True)
            for per_channel in (False, True):
                r = onnxruntime_anchor(model, input_name, folds, per_channel, tmp)
                what = "onnxruntime QDQ s8s8 " + ("per-channel" if per_channel else "per-tensor")
                rows.append(
                    [
                        name,
                        what,
                        f"{100 * r['top1']:.1f}%",
                        f"{r['sqnr']:.2f}",
                        "-",
                        "-",
                        f"{r['quantize_s']:.1f}",
                        "-",
                    ]
                )
                print(*rows[-1], sep=" | ", flush=True)
    print()
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        for line in [header, ["-" * w for w in widths], *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
