"""Calibration benchmark: our calibrators against onnxruntime.quantization's, same data, same run.

For each model, sample count and method, the calibration runs in a fresh child process that
reports its wall time (the calibration call only) and its peak RSS (VmHWM, whole process).
Samples are generated on the fly by a reader (never held in memory), identically for both
libraries. Then the accuracy of each calibrator on the real models: quantize (QDQ, int8,
per-channel weights) with the ranges and compare with fp32.

    python bench/calibration.py                       # everything (about 15 minutes)
    python bench/calibration.py --samples 10,100 --models resnet18 --resolution 112
    python bench/calibration.py --skip-speed          # accuracy only
    python bench/calibration.py --repeat 3            # medians of 3 runs (up to 100 samples)

Models: ``resnet18`` (ResNet-18 topology, random He-initialized weights, 3x224x224 by
default), ``efficientnet`` (models/efficientnet_lite0, trained; photos cycled with flips
and shifts past the 122 crops), ``digits`` (models/digits_cnn, trained; its real digits).
onnxruntime's Entropy and Percentile calibrators keep every activation of every sample;
they are skipped where that would exceed ``--ort-memory-limit-gb`` (estimated from the
activation size), and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
OUR_METHODS = ("naive", "minmax", "minmax_avg", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


# ------------------------------------------------------------------------------------ models


def build_resnet18(size: int = 224, seed: int = 0):
    """ResNet-18 topology (BatchNorm folded into Conv), random He-initialized weights."""
    import onnx
    import onnx.helper as oh
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(seed)
    inits: list = []
    nodes: list = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool = True) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        wn, bn, out = name("w"), name("b"), name("conv")
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        pad = k // 2
        nodes.append(
            oh.make_node("Conv", [x, wn, bn], [out], strides=[stride] * 2, pads=[pad] * 4, name=out)
        )
        if relu:
            r = name("relu")
            nodes.append(oh.make_node("Relu", [out], [r], name=r))
            return r
        return out

    x = conv("input", 3, 64, 7, 2)
    p = name("pool")
    nodes.append(
        oh.make_node("MaxPool", [x], [p], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    )
    x, cin = p, 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            y = conv(x, cin, cout, 3, s)
            y = conv(y, cout, cout, 3, 1, relu=False)
            short = x if (s == 1 and cin == cout) else conv(x, cin, cout, 1, s, relu=False)
            a, r = name("add"), name("relu")
            nodes.append(oh.make_node("Add", [y, short], [a], name=a))
            nodes.append(oh.make_node("Relu", [a], [r], name=r))
            x, cin = r, cout
    g, f = name("gap"), name("flat")
    nodes.append(oh.make_node("GlobalAveragePool", [x], [g], name=g))
    nodes.append(oh.make_node("Flatten", [g], [f], name=f))
    fc = (rng.standard_normal((512, 1000)) * np.sqrt(1 / 512)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc_w"))
    nodes.append(oh.make_node("MatMul", [f, "fc_w"], ["logits"], name="fc"))
    graph = oh.make_graph(
        nodes,
        "resnet18",
        [oh.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def model_path(kind: str, workdir: Path, resolution: int) -> Path:
    if kind == "resnet18":
        path = workdir / f"resnet18_{resolution}.onnx"
        if not path.exists():
            import onnx

            onnx.save(build_resnet18(resolution), path)
        return path
    if kind == "efficientnet":
        return MODELS / "efficientnet_lite0" / "model.onnx"
    if kind == "digits":
        return MODELS / "digits_cnn" / "model.onnx"
    raise SystemExit(f"unknown model {kind}")


# ------------------------------------------------------------------------------------ data


class SampleReader:
    """Sample ``i`` generated on demand; one sample per ``get_next`` (the usual reader).

    Implements both onnxruntime's and our reader protocol (``get_next`` and ``__len__``).
    """

    def __init__(self, kind: str, n: int, resolution: int = 224) -> None:
        self.kind, self.n, self.resolution, self.i = kind, n, resolution, 0
        if kind == "efficientnet":
            with np.load(MODELS / "efficientnet_lite0" / "photos.npz") as data:
                self.photos = data["images"]  # uint8 [122,224,224,3]
        elif kind == "digits":
            with np.load(MODELS / "digits_cnn" / "calib.npz") as a:
                calib = a["input"]
            with np.load(MODELS / "digits_cnn" / "test.npz") as b:
                test = b["input"]
            self.digits = np.concatenate([calib, test])  # 1,200 real digits (3.8 MB)

    def sample(self, i: int) -> np.ndarray:
        if self.kind == "resnet18":
            rng = np.random.default_rng(i)
            r = self.resolution
            return rng.standard_normal((1, 3, r, r), dtype=np.float32)
        if self.kind == "efficientnet":
            img = self.photos[i % len(self.photos)]
            cycle = i // len(self.photos)
            if cycle % 2:
                img = img[:, ::-1]
            if cycle >= 2:
                img = np.roll(img, 8 * (cycle // 2), axis=(0, 1))
            x = (img.astype(np.float32) - np.float32(127.0)) / np.float32(128.0)
            return np.ascontiguousarray(x.transpose(2, 0, 1)[np.newaxis])
        x = self.digits[i % len(self.digits)]
        if i >= len(self.digits):
            x = np.roll(x, 1 + i // len(self.digits), axis=2)
        return x[np.newaxis]

    def get_next(self):
        if self.i >= self.n:
            return None
        self.i += 1
        return {"input": self.sample(self.i - 1)}

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return self.n


# ------------------------------------------------------------------------------------ child


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(spec: dict) -> dict:
    """Run one calibration; report seconds (the call) and the process's peak RSS."""
    import resource

    import onnx

    def cpu() -> float:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime

    path = Path(spec["model"])
    reader = SampleReader(spec["kind"], spec["n"], spec["resolution"])
    # Both libraries use onnxruntime and onnx's shape inference; importing onnxruntime's
    # quantization package initializes the latter (10-16 ms on first use), so both
    # children import it before timing.
    import onnxruntime.quantization.calibrate  # noqa: F401

    if spec["lib"] == "ours":
        from systolic_sdk.calibration import calibrate

        model = onnx.load(path)
        t0, c0 = time.perf_counter(), cpu()
        ranges = calibrate(model, reader, method=spec["method"], progress=False)
        seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
    else:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), cpu()
            cal = create_calibrator(
                path,
                None,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod[spec["method"]],
                extra_options={},
            )
            cal.collect_data(reader)
            data = cal.compute_data()
            seconds, cpu_seconds = time.perf_counter() - t0, cpu() - c0
            ranges = {k: tuple(float(np.ravel(v)[0]) for v in data[k].range_value) for k in data}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": _rss_kb("VmHWM") / 1024,
        "tensors": len(ranges),
        "ranges": {k: list(v) for k, v in ranges.items()} if spec.get("keep_ranges") else None,
    }


def run_child(spec: dict, timeout: float = 3600) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--child", json.dumps(spec), str(out)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timeout after {timeout:.0f} s"}
        if out.exists():
            return json.loads(out.read_text())
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0][:200]}"}


# ------------------------------------------------------------------------------------ speed


def activation_bytes(path: Path, resolution: int) -> int:
    """Bytes of every float activation of one sample (onnxruntime's per-sample retention)."""
    import onnx

    from systolic_sdk.calibration.session import augment_model, calibratable_tensors

    model = onnx.load(path)
    kind = "resnet18" if "resnet18" in path.name else path.parent.name
    kind = {"efficientnet_lite0": "efficientnet", "digits_cnn": "digits"}.get(kind, kind)
    import onnxruntime as ort

    names = calibratable_tensors(model)
    sess = ort.InferenceSession(
        augment_model(model, names).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = SampleReader(kind, 1, resolution).sample(0)
    return sum(a.nbytes for a in sess.run(None, {"input": x}))


def speed(args, workdir: Path) -> list[dict]:
    rows = []
    for kind in args.models:
        path = model_path(kind, workdir, args.resolution)
        per_sample = activation_bytes(path, args.resolution)
        print(f"\n## {kind}: {path.name}, {per_sample / 2**20:.1f} MiB of activations per sample")
        for n in args.samples:
            jobs = [("ours", m) for m in args.methods] + [("ort", m) for m in args.ort_methods]
            repeats = args.repeat if n <= args.repeat_up_to else 1
            runs: dict[tuple[str, str], list[dict]] = {job: [] for job in jobs}
            for rep in range(repeats):  # interleaved, so that load changes hit every job
                for lib, method in jobs:
                    est = per_sample * n * 2.2 / 2**30  # kept outputs plus concatenation copies
                    if lib == "ort" and method != "MinMax" and est > args.ort_memory_limit_gb:
                        res = {"error": f"skipped (would keep ~{est:.0f} GiB of activations)"}
                    else:
                        spec = {
                            "lib": lib,
                            "method": method,
                            "model": str(path),
                            "kind": kind,
                            "n": n,
                            "resolution": args.resolution,
                        }
                        res = run_child(spec)
                    runs[(lib, method)].append(res)
                    if "error" in res:
                        print(f"  {kind} n={n:5d} {lib:4s} {method:11s} {res['error']}")
                    else:
                        print(
                            f"  {kind} n={n:5d} {lib:4s} {method:11s} {res['seconds']:8.3f} s "
                            f"{res['cpu_seconds']:8.3f} cpu-s {res['peak_mb']:8.0f} MB  "
                            f"({res['tensors']} tensors, run {rep + 1}/{repeats})",
                            flush=True,
                        )
            for (lib, method), results in runs.items():
                rows.append(
                    {"model": kind, "n": n, "lib": lib, "method": method, **_median(results)}
                )
    return rows


def _median(results: list[dict]) -> dict:
    """Median wall, CPU time and peak RSS over repeated runs (the first error otherwise)."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    out = dict(ok[0])
    for key in ("seconds", "cpu_seconds", "peak_mb"):
        out[key] = float(np.median([r[key] for r in ok]))
    out["runs"] = len(ok)
    return out


def _secs(s: float) -> str:
    """Seconds with two decimals, three below 1 s (tiny models)."""
    return f"{s:.3f}" if s < 1 else f"{s:.2f}"


def speed_table(rows: list[dict]) -> str:
    lines = []
    for kind in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == kind]
        ns = sorted({r["n"] for r in sub})
        lines.append(f"\n### {kind}\n")
        head = "| calibrator | " + " | ".join(f"{n}: s / cpu-s / MB" for n in ns) + " |"
        if len(ns) > 1:
            head += f" RSS {ns[-1]}/{ns[0]} |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for lib, method in dict.fromkeys((r["lib"], r["method"]) for r in sub):
            cells, peaks = [], {}
            for n in ns:
                r = next(r for r in sub if (r["lib"], r["method"], r["n"]) == (lib, method, n))
                if "error" in r:
                    cells.append(r["error"])
                else:
                    cells.append(
                        f"{_secs(r['seconds'])} / {_secs(r['cpu_seconds'])} / {r['peak_mb']:.0f}"
                    )
                    peaks[n] = r["peak_mb"]
            label = f"{'ours' if lib == 'ours' else 'onnxruntime'} {method}"
            line = f"| {label} | " + " | ".join(cells) + " |"
            if len(ns) > 1:
                ok = ns[0] in peaks and ns[-1] in peaks
                line += f" {peaks[ns[-1]] / peaks[ns[0]]:.2f}x |" if ok else " - |"
            lines.append(line)
        # time ratio of each of our methods to onnxruntime MinMax at equal samples
        ort = {r["n"]: r for r in sub if r["lib"] == "ort" and r["method"] == "MinMax"}
        if ort:
            lines.append("\nwall time (and CPU time) / onnxruntime MinMax's, at equal samples:\n")
            lines.append("| calibrator | " + " | ".join(str(n) for n in ns) + " |")
            lines.append("|" + "---|" * (len(ns) + 1))
            for method in dict.fromkeys(r["method"] for r in sub if r["lib"] == "ours"):
                cells = []
                for n in ns:
                    ours = next(
                        r for r in sub if (r["lib"], r["method"], r["n"]) == ("ours", method, n)
                    )
                    ref = ort.get(n)
                    ok = ref and "error" not in ref and "error" not in ours
                    cells.append(
                        f"{ours['seconds'] / ref['seconds']:.2f} "
                        f"({ours['cpu_seconds'] / ref['cpu_seconds']:.2f})"
                        if ok
                        else "-"
                    )
                lines.append(f"| ours {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ accuracy


def _fp32_and_eval(kind: str):
    if kind == "efficientnet":
        with np.load(MODELS / "efficientnet_lite0" / "photos.npz") as data:
            imgs = data["images"]
        x = ((imgs.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x)
        return x[0::2], x[1::2], None  # calibrate on even crops, evaluate on odd
    with np.load(MODELS / "digits_cnn" / "calib.npz") as a:
        calib = a["input"]
    with np.load(MODELS / "digits_cnn" / "test.npz") as b:
        test, labels = b["input"], b["label"]
    return calib, test, labels


def _run(path_or_bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return np.concatenate(
        [sess.run(None, {"input": x[i : i + 32]})[0] for i in range(0, len(x), 32)]
    )


def accuracy(args, workdir: Path) -> str:
    import onnx

    from systolic_sdk import api
    from systolic_sdk.calibration import ArrayReader, calibrate

    lines = []
    for kind in [k for k in args.models if k in ("efficientnet", "digits")]:
        path = model_path(kind, workdir, args.resolution)
        calib, evalx, labels = _fp32_and_eval(kind)
        ref = _run(str(path), evalx)
        top1_ref = ref.argmax(1)
        lines.append(
            f"\n### {kind}: calibrated on {len(calib)} samples, evaluated on {len(evalx)}\n"
        )
        what = "top-1 accuracy" if labels is not None else "top-1 agreement with fp32"
        lines.append(f"| calibrator | per-channel: {what} | per-tensor: {what} |")
        lines.append("|---|---|---|")
        if labels is not None:
            lines.append(f"| fp32 | {(top1_ref == labels).mean():.2%} | |")
        model = onnx.load(path)
        for lib, method in [("ours", m) for m in args.methods] + [
            ("ort", m) for m in args.ort_methods
        ]:
            cells = []
            ranges = None
            if lib == "ours":
                ranges = calibrate(
                    model, ArrayReader({"input": calib}), method=method, progress=False
                )
            for per_channel in (True, False):
                out = workdir / f"{kind}_{lib}_{method}_{per_channel}.onnx"
                try:
                    if lib == "ours":
                        cache = workdir / f"{kind}_{method}.json"
                        cache.write_text(json.dumps({k: list(v) for k, v in ranges.items()}))
                        api.quantize_static(
                            model, out, None, per_channel=per_channel, calibration_cache_path=cache
                        )
                    else:
                        from onnxruntime.quantization import CalibrationMethod as M
                        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

                        if method != "MinMax" and len(calib) > 64 and kind == "efficientnet":
                            raise RuntimeError("skipped (memory)")
                        quantize_static(
                            str(path),
                            str(out),
                            SampleReaderFromArray(calib),
                            quant_format=QuantFormat.QDQ,
                            per_channel=per_channel,
                            activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=getattr(M, method),
                        )
                    got = _run(str(out), evalx).argmax(1)
                    score = (
                        (got == labels).mean() if labels is not None else (got == top1_ref).mean()
                    )
                    cells.append(f"{score:.2%}")
                except Exception as exc:  # noqa: BLE001 - report and go on
                    cells.append(" ".join(str(exc).split())[:80])
            label = f"{'ours' if lib == 'ours' else 'onnxruntime'} {method}"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


class SampleReaderFromArray:
    """onnxruntime reader over an array, one sample per call."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.i = x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {"input": self.x[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


# ------------------------------------------------------------------------------------ main


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        res = child(json.loads(sys.argv[2]))
        Path(sys.argv[3]).write_text(json.dumps(res))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,efficientnet,digits")
    p.add_argument("--samples", default="10,100,1000")
    p.add_argument("--methods", default=",".join(OUR_METHODS))
    p.add_argument("--ort-methods", default=",".join(ORT_METHODS))
    p.add_argument("--resolution", type=int, default=224, help="resnet18 input size")
    p.add_argument("--ort-memory-limit-gb", type=float, default=8.0)
    p.add_argument("--repeat", type=int, default=1, help="runs per configuration (medians)")
    p.add_argument(
        "--repeat-up-to", type=int, default=100, help="repeat only at this many samples or fewer"
    )
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--json", type=Path, help="also write the raw speed rows here")
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.samples = [int(s) for s in args.samples.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    args.ort_methods = [m for m in args.ort_methods.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_speed:
            print(
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
                f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs"
            )
            rows = speed(args, workdir)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
            print(speed_table(rows))
        if not args.skip_accuracy:
            print(accuracy(args, workdir))


if __name__ == "__main__":
    main()
