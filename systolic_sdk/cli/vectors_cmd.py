"""``export-vectors``: per-layer golden vectors of a Systolic graph."""

from __future__ import annotations

import click

from systolic_sdk.cli.common import CONTEXT_SETTINGS, say, sdk_errors


@click.command(
    "export-vectors",
    context_settings=CONTEXT_SETTINGS,
    short_help="Per-layer golden vectors (.pb, .npy, C header, hex) of a Systolic graph.",
)
@click.argument("quant_model", type=click.Path(dir_okay=False))
@click.option("--data", "data", required=True, type=click.Path(), help="Input samples "
              "(.npz keyed by input name, .npy, .pb, or an ONNX test-data folder).")  # fmt: skip
@click.option("-o", "--output", "output", required=True, type=click.Path(),
              help="Output folder (created; must not exist or be empty).")  # fmt: skip
@click.option("--format", "formats", default="pb,npy,c-header,hex", show_default=True,
              help="Comma-separated formats: pb, npy, c-header, hex.")  # fmt: skip
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of input samples (the first ones of --data).")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace a non-empty output folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@sdk_errors
def export_vectors(
    quant_model: str, data: str, output: str, formats: str, samples: int, force: bool, quiet: bool
) -> None:
    """Export each accelerator layer's int8 input, weights (as the array reads them), int32
    bias and accumulators, multiplier and int8 output of QUANT_MODEL, with a manifest
    (the model's sha256, the SDK version, the array configuration, each file's sha256).

    OUTPUT must be a new or empty folder; --force replaces an earlier export there. The
    C header (layers.h) can be #included by a bare-metal test: arrays with their sizes
    and the expected outputs.

    \b
    Examples:
      systolic-quantize export-vectors q.onnx --data test_data_set_0 -o vectors
      systolic-quantize export-vectors q.onnx --data test.npz -o vectors --samples 4 \\
          --format c-header,hex
    """
    from systolic_sdk.vectors import export_vectors as run_export

    man = run_export(quant_model, data, output, formats.split(","), samples, force)
    say(quiet, f"wrote {len(man['layers'])} layers ({', '.join(man['formats'])}) to {output}")
