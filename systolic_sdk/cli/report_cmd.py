"""``systolic-quantize report``: one self-contained HTML page (and JSON) on a quantized model."""

from __future__ import annotations

from pathlib import Path

import click

from systolic_sdk.cli.common import CONTEXT_SETTINGS, say, sdk_errors
from systolic_sdk.errors import SdkError

EPILOG = """\b
Example:
  systolic-quantize report model.systolic.onnx --fp32 model.onnx \\
      --data test.npz -o report.html --max-samples 200

The page needs no network: styles, the chart renderer and the data are inline.
"""


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


@click.command(
    "report",
    context_settings=CONTEXT_SETTINGS,
    epilog=EPILOG,
    short_help="HTML/JSON report: per-layer SQNR, histograms, accumulators, cycles.",
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
    help="Input samples (.npz/.npy file or folder, test-data folder, as for calibration).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML page to write.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The report data as JSON [default: the HTML path with .json, e.g. report.json].",
)
@click.option(
    "--dim", type=click.IntRange(min=1), default=16, show_default=True, help="Array size DIM."
)
@click.option(
    "--max-samples",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Use at most N samples.",
)
@click.option(
    "--target",
    type=click.Choice(["systolic", "cpu"]),
    default=None,
    help="Backend the graph is for. Default: the model's metadata, else guessed from its ops.",
)
@click.option(
    "--bins",
    type=click.IntRange(min=4, max=1024),
    default=64,
    show_default=True,
    help="Histogram bins per activation.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@sdk_errors
def report_command(
    quant_model: Path,
    fp32_path: Path,
    data: Path,
    output: Path,
    json_out: Path | None,
    dim: int,
    max_samples: int,
    target: str | None,
    bins: int,
    quiet: bool,
) -> None:
    """Report on QUANT_MODEL against its fp32 model on real data: per-layer SQNR,
    activation histograms with their clip ranges and clipped fractions, accumulator ranges
    against the 2^24 and 2^31 limits, cycles and utilization on the array, and
    bit-exactness of the emulator against onnxruntime. Writes one self-contained HTML page
    and the same data as JSON.
    """
    from systolic_sdk.graph.io import check_output_path, write_bytes_atomic
    from systolic_sdk.report import build_report, render_html, to_json

    if json_out is None:
        json_out = output.with_suffix(".json")
    inputs = (quant_model, fp32_path, data)
    check_output_path(output, *inputs)
    check_output_path(json_out, *inputs)
    if _same(output, json_out):
        raise SdkError(f"{output}: the HTML and JSON outputs are the same file")
    report = build_report(
        quant_model,
        fp32_path,
        data,
        dim=dim,
        max_samples=max_samples,
        target=target,
        bins=bins,
        progress=None if not quiet else False,
    )
    page = render_html(report)
    write_bytes_atomic(output, page.encode())
    try:
        write_bytes_atomic(json_out, (to_json(report, indent=1) + "\n").encode())
    except BaseException:
        output.unlink(missing_ok=True)  # both or neither
        raise
    for o in report["outputs"]:
        parts = []
        if o["bit_exact"] is not None:
            parts.append("bit-exact" if o["bit_exact"] else f"NOT bit-exact ({o['n_diff']} differ)")
        if o["top1_agreement"] is not None:
            parts.append(f"top-1 agreement {100 * o['top1_agreement']:.1f}%")
        sq = o["sqnr_db"]
        if sq is not None:
            parts.append("SQNR exact" if sq == "inf" else f"SQNR {float(sq):.2f} dB")
        say(quiet, f"{o['name']}: " + ", ".join(parts))
    t = report["totals"]
    say(
        quiet,
        f"{t['layers']} layers ({t['array_layers']} on the array), "
        f"{t['est_cycles']:,} cycles per inference, utilization {100 * t['utilization']:.1f}%",
    )
    say(quiet, f"wrote {output} ({len(page):,} bytes) and {json_out}")
