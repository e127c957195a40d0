"""``conformance``: generate Systolic datapath conformance suites and run backends on them."""

from __future__ import annotations

from pathlib import Path

import click

from systolic_sdk.cli.common import CONTEXT_SETTINGS, say, sdk_errors, split_names


@click.group("conformance", context_settings=CONTEXT_SETTINGS)
def conformance() -> None:
    """Backend-conformance suites for the Systolic datapath.

    A suite holds single-op cases (QLinearConv with and without relu, QLinearConv_nhwc
    with fused ReLU and max pooling, QLinearMatMul, com.microsoft QLinearAdd, QLinearRelu,
    int8 MaxPool, QuantizeLinear, DequantizeLinear; int8, zero point 0, per-tensor) in the
    ONNX test-data layout, with expected outputs from the bit-exact emulator and a
    manifest that tags each case with the corners it provably exercises.

    \b
    Examples:
      systolic-quantize conformance generate -o suite
      systolic-quantize conformance run suite --backend systolic_sdk.conformance.runners:emulator
      systolic-quantize conformance run suite --backend my_board.py:run --junit report.xml
      systolic-quantize conformance run suite --backend onnxruntime_lowered -k tie
    """


@conformance.command("generate", context_settings=CONTEXT_SETTINGS)
@click.option("-o", "--output", "output", required=True, type=click.Path(),
              help="Suite folder to write (must not exist or be empty).")  # fmt: skip
@click.option("--ops", "ops", multiple=True, metavar="OP[,OP...]",
              help="Only these ops (repeat or comma-separate): QLinearConv, QLinearConv_nhwc, "
              "QLinearMatMul, QLinearAdd, QLinearRelu, MaxPool, QuantizeLinear, "
              "DequantizeLinear. Default: all.")  # fmt: skip
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random cases per (op, corner).")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed; the same seed gives byte-identical suites.")  # fmt: skip
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing suite at OUTPUT (other non-empty folders are refused).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@sdk_errors
def generate_command(
    output: str, ops: tuple[str, ...], count: int, seed: int, force: bool, quiet: bool
) -> None:
    """Write a conformance suite to OUTPUT.

    Each case is a folder CASE/model.onnx + CASE/test_data_set_0/input_K.pb and
    output_K.pb; OUTPUT/manifest.json lists every case with its op, its tags (tie,
    tie-exact, tie-f32-rounded, saturation-hi, saturation-lo, acc-gt-2^24, acc-near-2^31,
    int32-wrap, conv-padding, pool-padding, pool-pad-as-zero, pool-pad-excluded, stride,
    dilation, group, depthwise, odd-shape, relu, maxpool-fusion, ...), its multipliers,
    and the sha256 of each file, with the seed and the SDK version. A case tagged tie
    changes under round-half-away-from-zero; every other case holds no .5 value in any
    rounding step.

    \b
    Examples:
      systolic-quantize conformance generate -o suite
      systolic-quantize conformance generate -o suite --count 5 --seed 7
      systolic-quantize conformance generate -o conv_suite --ops QLinearConv,QLinearConv_nhwc
    """
    from systolic_sdk.conformance import generate_suite

    man = generate_suite(output, split_names(ops), count, seed, force)
    ties = sum("tie" in c["tags"] for c in man["cases"])
    say(quiet, f"wrote {len(man['cases'])} cases ({ties} tagged tie) to {output}")


@conformance.command(
    "run", context_settings=CONTEXT_SETTINGS, short_help="Run a backend on a suite, bit-exact."
)
@click.argument("suite", type=click.Path())
@click.option("--backend", "backend", required=True, metavar="MODULE:FUNCTION",
              help="The backend under test: a function run(model_path: str, inputs: "
              "list[np.ndarray]) -> list[np.ndarray], named as package.module:function or "
              "path/to/file.py:function. Built in: emulator, onnxruntime_lowered "
              "(systolic_sdk.conformance.runners).")  # fmt: skip
@click.option("--junit", "junit", type=click.Path(), help="Also write a JUnit XML report.")
@click.option("-k", "patterns", multiple=True, metavar="PATTERN",
              help="Only cases whose name contains PATTERN, or whose op or a tag equals it "
              "(case-insensitive; * ? [ make it a glob). Repeat to add cases.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary.")
@click.pass_context
@sdk_errors
def run_command(
    ctx: click.Context,
    suite: str,
    backend: str,
    junit: str | None,
    patterns: tuple[str, ...],
    quiet: bool,
) -> None:
    """Run every case of SUITE on a backend and compare with zero tolerance.

    Outputs must match in dtype, shape and every bit (floats bitwise). Prints PASS/FAIL
    per case (a failure names the first differing index and both values; a backend that
    raises is an ERROR for that case) and a summary. Exit code 0 when every case passes,
    1 when some fail, 2 on bad input (missing suite, bad manifest, unimportable backend).

    \b
    A backend is one function, for example in board.py:
      def run(model_path, inputs):   # inputs: numpy arrays in input_K.pb order
          return [my_board.execute(model_path, inputs)]   # outputs in graph order

    \b
    Examples:
      systolic-quantize conformance run suite --backend systolic_sdk.conformance.runners:emulator
      systolic-quantize conformance run suite --backend tools/board.py:run --junit report.xml
      systolic-quantize conformance run suite --backend onnxruntime_lowered -k QLinearAdd -k tie
    """
    from systolic_sdk.conformance import ConformanceError, load_backend, load_suite, run_suite
    from systolic_sdk.conformance.replay import write_junit

    if junit is not None:
        out = Path(junit)
        if Path(suite).is_dir() and out.resolve().is_relative_to(Path(suite).resolve()):
            raise ConformanceError(f"--junit {junit}: inside the suite; write it elsewhere")
        if out.is_dir():
            raise ConformanceError(f"--junit {junit}: is a folder, expected a file path")
        if not out.resolve().parent.is_dir():
            raise ConformanceError(f"--junit {junit}: folder {out.resolve().parent} does not exist")
    loaded = load_suite(suite)
    fn = load_backend(backend)

    def show(result) -> None:
        if result.status == "pass":
            if not quiet:
                click.echo(f"PASS   {result.name}")
        else:
            tags = ",".join(result.tags)
            click.echo(f"{result.status.upper():<6} {result.name} [{tags}]: {result.message}")

    report = run_suite(loaded, fn, list(patterns) or None, on_result=show)
    report.backend = backend
    click.echo(report.summary())
    shared = report.shared_failure_tags()
    if shared:
        click.echo(f"every failing case is tagged: {', '.join(shared)}")
    if junit is not None:
        write_junit(junit, report, loaded)
    if not report.ok:
        ctx.exit(1)
