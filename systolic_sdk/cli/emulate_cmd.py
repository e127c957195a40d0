"""``systolic-quantize emulate``: run a quantized model on the bit-exact emulator."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click

from systolic_sdk.errors import SdkError

if TYPE_CHECKING:
    import numpy as np


class _UserError(click.ClickException):
    """An SdkError on the command line: ``error: <message>`` and exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - click API
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _fmt_count(n: float) -> str:
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_layer_table(stats: list) -> str:
    """The per-layer table: name, op, shapes, I/J/K, tiles, cycles, utilization, flags."""
    from runtime_emulator.array import total_utilization

    header = (
        "layer",
        "op",
        "input",
        "output",
        "I",
        "J",
        "K",
        "tiles",
        "ideal cyc",
        "est cyc",
        "util",
        "|acc| bound",
        "flags",
    )
    rows = [header]
    for s in stats:
        rows.append(
            (
                s.name,
                s.op,
                _fmt_shape(s.input_shape),
                _fmt_shape(s.output_shape),
                str(s.I),
                str(s.J) if s.groups == 1 else f"{s.J}x{s.groups}g",
                str(s.K),
                str(s.tiles),
                _fmt_count(s.ideal_cycles),
                _fmt_count(s.est_cycles),
                f"{100 * s.utilization:.1f}%",
                str(s.acc_bound),
                ",".join(s.acc_flags) or "-",
            )
        )
    ideal = sum(s.ideal_cycles for s in stats)
    est = sum(s.est_cycles for s in stats)
    rows.append(
        (
            "total",
            f"{len(stats)} layers",
            "",
            "",
            "",
            "",
            "",
            str(sum(s.tiles for s in stats)),
            _fmt_count(ideal),
            _fmt_count(est),
            f"{100 * total_utilization(stats):.1f}%",
            "",
            "",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    numeric = set(range(4, 12))
    lines = []
    for k, r in enumerate(rows):
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


_HELP = """Run a quantized ONNX model on the bit-exact Systolic emulator.

Quantized ops (QLinearConv, QLinearConv_nhwc, QLinearMatMul, QLinearAdd, QLinearRelu,
Q/DQ, ...) run on the emulator's datapath; every other op on a float reference. Prints
one row per accelerator layer: shapes, the matmul I x K by K x J it maps to, DIM x DIM
tiles, ideal and estimated cycles, utilization, and the worst-case |accumulator| with
flags f32>2^24 (float32 conversion drops bits) and wrap>2^31 (the accumulator wraps).

INPUTS is an ONNX test-data folder (test_data_set_N/input_K.pb), a folder of
input_K.pb, an .npy (single-input model) or an .npz keyed by input name. When
output_K.pb files sit beside the inputs, the outputs are checked bit for bit.

\b
Example:
  systolic-quantize emulate model_int8.onnx --inputs test_data_set_0 -o out/
  systolic-quantize emulate model_int8.onnx --inputs x.npz --trace trace/ --dim 32
"""


@click.command(
    "emulate",
    help=_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
    short_help="Run a quantized model on the bit-exact emulator; per-layer array table.",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--inputs",
    "inputs_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Test-data folder, folder of input_K.pb, .npy or .npz.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the outputs: output_K.pb and outputs.npz (one subfolder per input set "
    "when there are several).",
)
@click.option(
    "--trace",
    "trace_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for every intermediate tensor (tensors.npz) and the node list (nodes.json).",
)
@click.option(
    "--dim", type=click.IntRange(min=1), default=16, show_default=True, help="Array size DIM."
)
@click.option(
    "--target",
    type=click.Choice(["systolic", "cpu"]),
    default=None,
    help="Backend the graph is for (the meaning of com.microsoft QLinearAdd). "
    "Default: the model's systolic_sdk.backend metadata, else guessed from its ops.",
)
@click.option(
    "--acc-range",
    type=click.Choice(["int8", "observed"]),
    default="int8",
    show_default=True,
    help="Input range for the accumulator bound: the full integer range, or the range "
    "observed on these inputs.",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "onnxruntime", "numpy"]),
    default=None,
    help="How conv and matmul layers compute: auto takes onnxruntime's kernels where they "
    "passed the bit-exactness self-check on this machine (same bits, faster), numpy the "
    "emulator's NumPy datapath everywhere; onnxruntime fails if the self-check fails.  "
    "[default: $SYSTOLIC_EMULATOR_ENGINE, else auto]",
)
@click.option(
    "--strict", is_flag=True, help="Exit with code 1 when outputs differ from output_K.pb."
)
def emulate(
    model: Path,
    inputs_path: Path,
    output: Path | None,
    trace_dir: Path | None,
    dim: int,
    target: str | None,
    acc_range: str,
    engine: str | None,
    strict: bool,
) -> None:
    from runtime_emulator import ort_engine

    try:
        with ort_engine.using(engine) if engine else contextlib.nullcontext():
            mismatch = _emulate(model, inputs_path, output, trace_dir, dim, target, acc_range)
    except SdkError as exc:
        raise _UserError(str(exc)) from None
    if mismatch and strict:
        raise SystemExit(1)


def _emulate(
    model_path: Path,
    inputs_path: Path,
    output: Path | None,
    trace_dir: Path | None,
    dim: int,
    target: str | None,
    acc_range: str,
) -> bool:
    """Run every input set; print the table and the checks. True when an output differs."""
    from runtime_emulator.array import ArrayConfig, record_stats
    from runtime_emulator.executor import Executor
    from runtime_emulator.io import (
        load_input_sets,
        prepare_dir,
        write_outputs,
        write_trace,
    )
    from systolic_sdk.graph.io import check_output_dir, load_model

    model = load_model(model_path)
    for p in (output, trace_dir):
        if p is not None:
            check_output_dir(p, model_path, inputs_path)
            prepare_dir(p)  # fail before the run, not after it
    config = ArrayConfig(dim=dim)
    executor = Executor(model, target=target, config=config)
    input_names = [vi.name for vi in executor.inputs]
    sets = load_input_sets(inputs_path, input_names, executor.output_names)
    for inset in sets:  # every feed error before any work
        inset.feeds = executor.validate_feeds(inset.feeds)
    from runtime_emulator import ort_engine

    engine = "onnxruntime kernels where bit-exact" if ort_engine.enabled() else "NumPy datapath"
    click.echo(
        f"{model_path.name}: {len(executor.nodes)} nodes, target {executor.target}, "
        f"DIM {dim}, {len(sets)} input set(s), engine: {engine}"
    )
    mismatch = False
    for k, inset in enumerate(sets):
        stats = []
        records = []
        start = time.perf_counter()
        for rec in executor.iter_nodes(inset.feeds, keep=trace_dir is not None):
            s = record_stats(rec, config, observed=acc_range == "observed")
            if s is not None:
                stats.append(s)
            records.append(
                {
                    "name": rec.name,
                    "op_type": rec.op_type,
                    "domain": rec.domain,
                    "inputs": list(rec.node.input),
                    "outputs": list(rec.node.output),
                    "backend": rec.backend,
                }
            )
        elapsed = time.perf_counter() - start
        env = executor.last_env
        outputs = {n: env[n] for n in executor.output_names}
        label = inset.name if len(sets) > 1 else str(inputs_path)
        if k == 0 or len(sets) > 1:
            click.echo(f"\n{label}: ran in {elapsed:.3f} s")
        if k == 0:
            click.echo(format_layer_table(stats) if stats else "(no accelerator layers)")
        for name in executor.output_names:
            arr = outputs[name]
            click.echo(f"output {name}: {arr.dtype} {list(arr.shape)}")
        if inset.expected is not None:
            problems = _reference_report(outputs, inset.expected)
            if problems:
                mismatch = True
                for line in problems:
                    click.echo(f"differs from the reference outputs: {line}")
                click.echo(REFERENCE_NOTE)
            else:
                click.echo("outputs match the expected output_K.pb bit for bit")
        if output is not None:
            base = prepare_dir(output)
            folder = base / inset.name if len(sets) > 1 else base
            write_outputs(folder, outputs, executor.output_names)
            click.echo(f"wrote outputs to {folder}")
        if trace_dir is not None:
            base = prepare_dir(trace_dir)
            folder = base / inset.name if len(sets) > 1 else base
            tensors = {n: a for n, a in env.items() if n not in executor.initializers}
            write_trace(folder, tensors, records)
            click.echo(f"wrote {len(tensors)} traced tensors to {folder}")
        del env, outputs
    return mismatch


REFERENCE_NOTE = (
    "note: the check is bit-exact, so it applies to reference outputs produced by this "
    "quantized graph (e.g. written with --output); references from the float model "
    "differ by the quantization error"
)


def _reference_report(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]
) -> list[str]:
    """One line per output that differs from its reference, bit for bit; for a float
    output with classes on the last axis, how often the top-1 class still agrees."""
    import numpy as np

    from runtime_emulator.io import compare_outputs

    lines = []
    for name, want in expected.items():
        problems = compare_outputs(actual, {name: want})
        if not problems:
            continue
        line = problems[0]
        got = actual.get(name)
        if (
            got is not None
            and got.shape == want.shape
            and got.ndim >= 2
            and got.shape[-1] > 1
            and got.dtype.kind == "f"
        ):
            agree = np.argmax(got, axis=-1) == np.argmax(want, axis=-1)
            line += f"; top-1 agreement {int(agree.sum())}/{agree.size}"
        lines.append(line)
    return lines
