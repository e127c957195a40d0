"""``systolic-quantize validate``: check a Systolic graph against its standard-ONNX lowering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from systolic_sdk.cli.common import CONTEXT_SETTINGS, say, sdk_errors
from systolic_sdk.errors import SdkError

EPILOG = """\b
Example:
  systolic-quantize validate model.systolic.onnx --fp32 model.onnx \\
      --data test.npz --samples 200 --json report.json

Exit codes: 0 bit-exact (or every difference is a documented hardware rule),
1 an unexplained divergence, 2 bad input.
"""


def _fmt_db(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) and x > 0 else f"{x:.2f} dB"


def _fmt_div(d) -> str:
    return (
        f"node '{d.node}' ({d.op_type}) tensor '{d.tensor}' batch {d.batch} "
        f"index {d.index}: emulator {d.emulator}, lowered {d.lowered} - cause: {d.cause}"
    )


def _feeds(data: Path, fp32_model, samples: int | None) -> list[dict]:
    """Feed dicts of at most 100 samples each (see ``calibration.samples.load_samples``)."""
    from systolic_sdk.calibration.samples import batches, load_samples

    return batches(load_samples(data, fp32_model, samples), 100)


@click.command(
    "validate",
    context_settings=CONTEXT_SETTINGS,
    epilog=EPILOG,
    short_help="Emulator vs onnxruntime on the lowering, bit for bit; accuracy vs fp32.",
)
@click.argument("quant_model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--fp32",
    "fp32_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The float model the quantized one came from.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="Input samples (.npz/.npy file or folder, as for calibration).",
)
@click.option("--samples", type=int, default=None, help="Use at most N samples.")
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the full report as JSON.",
)
@click.option("--quiet", is_flag=True, help="Print nothing; use the exit code.")
@sdk_errors
def validate_command(
    quant_model: Path,
    fp32_path: Path,
    data: Path,
    samples: int | None,
    json_out: Path | None,
    quiet: bool,
) -> None:
    """Run QUANT_MODEL (a Systolic graph) in the emulator and its standard-ONNX lowering
    in onnxruntime; report bit-exactness per output and traced tensor, the first
    divergence with its likely cause, and top-1 agreement and SQNR against the float model.
    """
    from runtime_emulator.validate import validate
    from systolic_sdk.graph.io import check_output_path, load_model, write_bytes_atomic
    from systolic_sdk.report.build import check_roles

    if samples is not None and samples < 1:
        raise SdkError(f"--samples must be >= 1, got {samples}")
    if json_out is not None:
        check_output_path(json_out, quant_model, fp32_path, data)
    qmodel = load_model(quant_model)
    fmodel = load_model(fp32_path)
    check_roles(qmodel, quant_model, fmodel, fp32_path)
    feeds = _feeds(data, fmodel, samples)
    try:
        report = validate(qmodel, fmodel, feeds)
    except SdkError:
        raise
    except Exception as exc:  # onnxruntime/emulator failures on a malformed graph
        raise SdkError(f"{quant_model}: cannot validate: {exc}") from None
    for o in report.outputs:
        top1 = "-" if o.top1_agreement is None else f"{100 * o.top1_agreement:.1f}%"
        exact = "yes" if o.bit_exact else f"no ({o.n_diff} differ)"
        say(
            quiet, f"{o.name}: bit-exact {exact}, top-1 agreement {top1}, SQNR {_fmt_db(o.sqnr_db)}"
        )
    n_exact = sum(t.bit_exact for t in report.tensors)
    say(
        quiet,
        f"traced tensors: {n_exact}/{len(report.tensors)} bit-exact ({report.samples} samples)",
    )
    if report.first_divergence is not None:
        say(quiet, "first divergence: " + _fmt_div(report.first_divergence))
    for note in report.notes:
        say(quiet, f"note: rule applied - {note}")
    say(quiet, "result: " + ("OK" if report.ok else "FAILED (unexplained divergence)"))
    if json_out is not None:
        text = json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"
        write_bytes_atomic(json_out, text.encode())
    if not report.ok:
        raise click.exceptions.Exit(1)
