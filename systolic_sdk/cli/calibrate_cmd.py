"""``systolic-quantize calibrate`` and ``static-runner``: the classic calibration CLIs.

``calibrate`` takes the original calibrate tool's flags (snake_case or kebab-case),
calibrates on a dataset (or reads a calibration table) and quantizes. ``static-runner``
takes onnxruntime's static quantize runner's flags and calibrates on the
``test_data_set_*`` folders beside the model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click

from systolic_sdk.cli.common import (
    CONTEXT_SETTINGS,
    backend_option,
    float_prep_options,
    overrides_extra,
    quant_type_options,
    quant_types,
    say,
    sdk_errors,
)
from systolic_sdk.errors import SdkError

CALIB_MODES = ("naive", "minmax_avg", "minmax", "percentile", "entropy", "mse")
RUNNER_METHODS = ("minmax", "entropy", "percentile", "naive", "minmax_avg", "mse")
DEFAULT_OUTPUT = "calibrated_quantized_model.onnx"


def check_backend(backend: str) -> str:
    """The backend name if the backend registry provides it; one-line error otherwise."""
    try:
        from systolic_sdk.backends import available_backends

        names = list(available_backends())
    except ImportError:
        names = ["cpu"]
    if backend not in names:
        if backend == "systolic":
            raise SdkError(
                "backend 'systolic' is not available yet in this installation "
                f"(available: {', '.join(names)})"
            )
        raise SdkError(f"unknown backend '{backend}' (available: {', '.join(names)})")
    return backend


def _calibration_options(
    percentile: float | None,
    moving_average: bool,
    averaging_constant: float | None,
    num_bins: int | None,
    num_quantized_bins: int | None,
) -> dict[str, Any]:
    """onnxruntime-style ``extra_options`` keys for the calibrator options given."""
    extra: dict[str, Any] = {}
    if percentile is not None:
        extra["CalibPercentile"] = percentile
    if moving_average:
        extra["CalibMovingAverage"] = True
    if averaging_constant is not None:
        extra["CalibMovingAverageConstant"] = averaging_constant
    if num_bins is not None:
        extra["CalibNumBins"] = num_bins
    if num_quantized_bins is not None:
        extra["CalibNumQuantizedBins"] = num_quantized_bins
    return extra


def _direct_options(extra: dict[str, Any], method: str) -> dict[str, Any]:
    """The same options as keyword arguments of ``calibration.calibrate``."""
    keys = {
        "CalibPercentile": ("percentile", "percentile"),
        "CalibMovingAverage": ("moving_average", "minmax"),
        "CalibMovingAverageConstant": ("averaging_constant", "minmax"),
        "CalibNumQuantizedBins": ("num_quantized_bins", "entropy"),
    }
    out: dict[str, Any] = {}
    for key, (option, only) in keys.items():
        if key in extra:
            if method != only:
                raise SdkError(f"--{option.replace('_', '-')} applies to --calib_mode {only} only")
            out[option] = extra[key]
    if "averaging_constant" in out and not out.get("moving_average"):
        raise SdkError("--averaging-constant needs --moving-average")
    if "CalibNumBins" in extra:
        out["num_bins"] = extra["CalibNumBins"]
    return out


def run_calibration_and_quantize(
    *,
    model_path: Path,
    reader_factory,
    method: str,
    extra: dict[str, Any],
    collect_options: dict[str, Any],
    output: Path | None,
    table_in: Path | None,
    table_out: Path | None,
    table_format: str | None,
    backend: str,
    quant_kwargs: dict[str, Any],
    data_path: Path | None = None,
) -> tuple[int, Any]:
    """Calibrate (or read a table), write the table if asked, quantize if ``output``.

    ``data_path`` (the dataset) is protected like the model: no output may replace it.
    Returns ``(number of calibrated tensors, quantized model or None)``.
    """
    from systolic_sdk.calibration.table import read_table, write_table
    from systolic_sdk.calibration.table import table_format as table_kind
    from systolic_sdk.graph.io import check_output_path, load_model

    fp32 = load_model(model_path)
    inputs = (model_path, data_path, table_in)
    if output is not None:
        check_output_path(output, *inputs)
    if table_out is not None:
        check_output_path(table_out, *inputs, output)
        table_kind(table_out, table_format)  # an unknown format fails before the work
    if output is None:
        # Calibration only: every float activation of the fp32 model.
        from systolic_sdk.calibration import calibrate

        if table_in is not None:
            raise SdkError("--calibration-table with --calibrate-only has nothing to do")
        reader = reader_factory(fp32)
        reader.collect_options = collect_options
        ranges = calibrate(fp32, reader, method=method, **_direct_options(extra, method))
        write_table(ranges, table_out, table_format, method=method)
        return len(ranges), None

    from systolic_sdk import api

    with tempfile.TemporaryDirectory(prefix="systolic-calib-") as tmp:
        cache = Path(tmp) / "ranges.json"
        reader = None
        if table_in is not None:
            ranges = read_table(table_in)
            cache.write_text(json.dumps({k: [lo, hi] for k, (lo, hi) in ranges.items()}))
        else:
            reader = reader_factory(fp32)
            reader.collect_options = collect_options
        quantized = api.quantize_static(
            fp32,
            None,
            reader,
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=cache,
            backend=backend,
            **quant_kwargs,
        )
        # The quantizer writes the ranges it calibrated as a cache (onnxruntime's
        # TensorsData JSON); the table reader understands that form.
        if table_in is None:
            ranges = read_table(cache, "json") if cache.exists() else {}
    if table_out is not None and ranges:
        write_table(ranges, table_out, table_format, method=method if table_in is None else None)
    from systolic_sdk.graph.io import save_model

    check_output_path(output, *inputs)
    save_model(quantized, output)
    return len(ranges), quantized


def _collect_options(
    batch_size: int | None, skip_nonfinite: bool, quiet: bool, unoptimized: bool = False
) -> dict:
    opts: dict[str, Any] = {"skip_nonfinite": skip_nonfinite}
    if unoptimized:
        opts["optimize_graph"] = False
    if batch_size is not None:
        opts["batch_size"] = batch_size
    if quiet:
        opts["progress"] = False
    return opts


_calib_option_decorators = [
    click.option("--percentile", type=float, help="percentile: the percentile (99.999)."),
    click.option(
        "--moving-average", "--moving_average", is_flag=True, help="minmax: moving average."
    ),
    click.option(
        "--averaging-constant",
        "--averaging_constant",
        type=click.FloatRange(0, 1, min_open=True),
        help="minmax --moving-average: the constant (0.01).",
    ),
    click.option(
        "--num-bins",
        "--num_bins",
        type=click.IntRange(min=8),
        help="Histogram bins per tensor (percentile/entropy/mse; 4096).",
    ),
    click.option(
        "--num-quantized-bins",
        "--num_quantized_bins",
        type=click.IntRange(min=2),
        help="entropy: quantized bins of the threshold search (128).",
    ),
    click.option(
        "--batch-size",
        "--batch_size",
        type=click.IntRange(min=1),
        help="Samples per onnxruntime run (default: sized from the model).",
    ),
    click.option(
        "--skip-nonfinite",
        "--skip_nonfinite",
        is_flag=True,
        help="Skip samples with NaN/Inf (with a warning) instead of failing.",
    ),
    click.option(
        "--no-graph-optimizations",
        "--no_graph_optimizations",
        "unoptimized",
        is_flag=True,
        help="Histogram methods: run the fp32 model without onnxruntime's graph "
        "optimizations (used by default: 1.2-2x faster, activations may differ from the "
        "unoptimized run in the last bits). The min/max methods never use them.",
    ),
    click.option(
        "--calibration-table-out",
        "--calibration_table_out",
        type=click.Path(path_type=Path),
        help="Also write the ranges to this table (.json, .txt/.cache, .flatbuffers).",
    ),
    click.option(
        "--table-format",
        "--table_format",
        type=click.Choice(["json", "text", "flatbuffers"]),
        help="Table format (default: from the suffix).",
    ),
]


def _quantize_options(activation_default: str):
    """The quantizer options both commands take: types, per-channel, format."""

    def decorate(func):
        func = click.option(
            "--quant-format",
            "--quant_format",
            "quant_format",
            type=click.Choice(["qdq", "qoperator"]),
            default=None,
            help="Output form.  [default: qoperator for --backend systolic, else qdq]",
        )(func)
        func = click.option(
            "--per-channel",
            "--per_channel",
            "per_channel",
            is_flag=True,
            help="Per-channel weights.",
        )(func)
        return quant_type_options(activation_default, snake_case=True)(func)

    return decorate


def _calib_options(func):
    for decorator in reversed(_calib_option_decorators):
        func = decorator(func)
    return func


CALIBRATE_EPILOG = """\b
Examples:
  # calibrate on a folder of images (ResNet preprocessing), entropy, then quantize
  systolic-quantize calibrate --model_path resnet.onnx --dataset_path images/ \\
      --calib_mode entropy --data_preprocess preprocess_method2 --dataset_size 100 \\
      --output_model_path resnet.int8.onnx --calibration-table-out resnet.calib.json
\b
  # quantize again from the saved table, without re-calibrating
  systolic-quantize calibrate --model_path resnet.onnx --calibration-table resnet.calib.json \\
      --output_model_path resnet.int8.onnx
\b
  # calibration only: write the ranges of every activation
  systolic-quantize calibrate --model_path m.onnx --dataset_path calib.npz --calibrate-only \\
      --calibration-table-out m.calib.flatbuffers
\b
Datasets: a folder of images (PNG/JPEG/BMP), .npy/.npz files, a TensorProto .pb bundle,
an ONNX test-data folder (test_data_set_N/input_K.pb) or a folder of input_K.pb.
"""


@click.command(
    "calibrate",
    context_settings=CONTEXT_SETTINGS,
    epilog=CALIBRATE_EPILOG,
    short_help="Calibrate on a dataset, then quantize (the calibrate tool's flags).",
)
@click.option(
    "--model_path", "--model-path", "model_path", required=True, type=click.Path(path_type=Path)
)
@click.option(
    "--dataset_path",
    "--dataset-path",
    "dataset_path",
    type=click.Path(path_type=Path),
    help="Calibration data (not needed with --calibration-table).",
)
@click.option(
    "--calib_mode",
    "--calib-mode",
    "calib_mode",
    type=click.Choice(CALIB_MODES, case_sensitive=False),
    default="minmax",
    show_default=True,
)
@click.option(
    "--data_preprocess",
    "--data-preprocess",
    "data_preprocess",
    default="None",
    show_default=True,
    help="Image preprocessing: preprocess_method1 (MobileNet), preprocess_method2 (ResNet), "
    "None, or a registered method.",
)
@click.option("--dataset_size", "--dataset-size", "dataset_size", type=click.IntRange(min=1))
@click.option(
    "--output_model_path",
    "--output-model-path",
    "output_model_path",
    type=click.Path(path_type=Path),
    help=f"The quantized model (default: {DEFAULT_OUTPUT}).",
)
@backend_option()
@click.option(
    "--calibration-table",
    "--calibration_table",
    type=click.Path(path_type=Path),
    help="Quantize with these ranges instead of calibrating.",
)
@click.option(
    "--calibrate-only",
    "--calibrate_only",
    is_flag=True,
    help="Write --calibration-table-out and stop (no quantization).",
)
@_quantize_options("qint8")
@_calib_options
@float_prep_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@sdk_errors
def calibrate_command(
    model_path: Path,
    dataset_path: Path | None,
    calib_mode: str,
    data_preprocess: str,
    dataset_size: int | None,
    output_model_path: Path | None,
    backend: str,
    calibration_table: Path | None,
    calibrate_only: bool,
    activation_type: str,
    weight_type: str,
    per_channel: bool,
    quant_format: str | None,
    percentile: float | None,
    moving_average: bool,
    averaging_constant: float | None,
    num_bins: int | None,
    num_quantized_bins: int | None,
    batch_size: int | None,
    skip_nonfinite: bool,
    unoptimized: bool,
    calibration_table_out: Path | None,
    table_format: str | None,
    equalization: bool | None,
    weight_rounding: bool | None,
    bias_correction: bool | None,
    quiet: bool,
) -> None:
    """Calibrate the model (--model_path) on a dataset with the chosen method, then
    quantize it (or, with --calibrate-only, write the calibration table)."""
    from systolic_sdk.calibration import open_source
    from systolic_sdk.calibration.preprocess import get_preprocessor

    check_backend(backend)
    method = calib_mode.lower()
    get_preprocessor(data_preprocess)  # fail early on an unknown name
    if calibrate_only:
        if calibration_table_out is None:
            raise SdkError("--calibrate-only needs --calibration-table-out FILE")
        if output_model_path is not None:
            raise SdkError("--calibrate-only writes no model; drop --output_model_path")
    if calibration_table is None and dataset_path is None:
        raise SdkError("give --dataset_path (or --calibration-table to skip calibration)")
    if calibration_table is not None and dataset_path is not None:
        raise SdkError("give --dataset_path or --calibration-table, not both")
    output = None if calibrate_only else (output_model_path or Path(DEFAULT_OUTPUT))
    extra = _calibration_options(
        percentile, moving_average, averaging_constant, num_bins, num_quantized_bins
    )
    _direct_options(extra, method)  # option/method consistency, before any work

    def reader_factory(model):
        return open_source(
            dataset_path, model, dataset_size=dataset_size, preprocess=data_preprocess
        )

    count, _ = run_calibration_and_quantize(
        model_path=model_path,
        reader_factory=reader_factory,
        method=method,
        extra=extra,
        collect_options=_collect_options(batch_size, skip_nonfinite, quiet, unoptimized),
        output=output,
        table_in=calibration_table,
        data_path=dataset_path,
        table_out=calibration_table_out,
        table_format=table_format,
        backend=backend,
        quant_kwargs=dict(
            per_channel=per_channel,
            quant_format=quant_format or ("qoperator" if backend == "systolic" else "qdq"),
            equalization=equalization,
            weight_rounding=weight_rounding,
            bias_correction=bias_correction,
            **quant_types(activation_type, weight_type),
        ),
    )
    source = f"table {calibration_table}" if calibration_table else f"{method} on {dataset_path}"
    if output is not None:
        say(quiet, f"wrote {output} ({count} tensor ranges from {source})")
    if calibration_table_out is not None:
        say(quiet, f"wrote {calibration_table_out} ({count} tensor ranges)")


RUNNER_EPILOG = """\b
Calibration data: the test_data_set_*/input_K.pb folders beside the model (the ONNX
model-zoo layout), as onnxruntime's static_quantize_runner reads them.
\b
Example:
  systolic-quantize static-runner -i model/model.onnx -o model_quant.onnx \\
      --activation_type quint8 --weight_type qint8 --per_channel --calibrate_method entropy
"""


@click.command(
    "static-runner",
    context_settings=CONTEXT_SETTINGS,
    epilog=RUNNER_EPILOG,
    short_help="Quantize on the test_data_set_* beside the model (the runner's flags).",
)
@click.option(
    "-i",
    "--input_model_path",
    "--input-model-path",
    "input_model_path",
    required=True,
    type=click.Path(path_type=Path),
)
@click.option(
    "-o",
    "--output_quantized_model_path",
    "--output-quantized-model-path",
    "output_path",
    required=True,
    type=click.Path(path_type=Path),
)
@_quantize_options("quint8")
@click.option(
    "--quantize_bias/--disable_quantize_bias",
    "--quantize-bias/--disable-quantize-bias",
    "quantize_bias",
    default=True,
    show_default=True,
    help="Quantize Conv/Gemm biases to int32.",
)
@click.option(
    "--tensor_quant_overrides",
    "--tensor-quant-overrides",
    "tensor_quant_overrides",
    type=click.Path(path_type=Path),
    help="JSON encodings fixing scales/zero points of named tensors.",
)
@click.option(
    "--calibrate_method",
    "--calibration_method",
    "--calibrate-method",
    "--calibration-method",
    "calibrate_method",
    type=click.Choice(RUNNER_METHODS, case_sensitive=False),
    default="minmax",
    show_default=True,
)
@click.option(
    "--calib_tensor_range_symmetric",
    "--calib-tensor-range-symmetric",
    "symmetric",
    is_flag=True,
    help="Make every calibrated range symmetric around 0.",
)
@click.option(
    "--calib_moving_average",
    "--calib-moving-average",
    "calib_moving_average",
    is_flag=True,
    help="minmax: moving average of per-sample min/max.",
)
@click.option("--dataset_size", "--dataset-size", "dataset_size", type=click.IntRange(min=1))
@backend_option()
@click.option("--batch_size", "--batch-size", "batch_size", type=click.IntRange(min=1))
@float_prep_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@sdk_errors
def static_runner_command(
    input_model_path: Path,
    output_path: Path,
    activation_type: str,
    weight_type: str,
    quantize_bias: bool,
    per_channel: bool,
    tensor_quant_overrides: Path | None,
    calibrate_method: str,
    quant_format: str | None,
    symmetric: bool,
    calib_moving_average: bool,
    dataset_size: int | None,
    backend: str,
    batch_size: int | None,
    equalization: bool | None,
    weight_rounding: bool | None,
    bias_correction: bool | None,
    quiet: bool,
) -> None:
    """Quantize a model calibrated on the test_data_set_* folders beside it."""
    from systolic_sdk.calibration import open_source
    from systolic_sdk.calibration.sources import DataSourceError, _test_data_sets
    from systolic_sdk.graph.io import load_model

    check_backend(backend)
    load_model(input_model_path)  # a bad model is the first thing to report
    folder = input_model_path.resolve().parent
    if not _test_data_sets(folder):
        raise DataSourceError(f"{folder}: no test_data_set_* folders beside the model")
    method = calibrate_method.lower()
    extra: dict[str, Any] = {}
    if symmetric:
        extra["CalibTensorRangeSymmetric"] = True
    if calib_moving_average:
        if method != "minmax":
            raise SdkError("--calib_moving_average applies to --calibrate_method minmax only")
        extra["CalibMovingAverage"] = True
    extra.update(overrides_extra(tensor_quant_overrides))

    def reader_factory(model):
        return open_source(folder, model, dataset_size=dataset_size)

    count, _ = run_calibration_and_quantize(
        model_path=input_model_path,
        reader_factory=reader_factory,
        method=method,
        extra=extra,
        collect_options=_collect_options(batch_size, False, quiet),
        output=output_path,
        table_in=None,
        data_path=folder,
        table_out=None,
        table_format=None,
        backend=backend,
        quant_kwargs=dict(
            per_channel=per_channel,
            quant_format=quant_format or ("qoperator" if backend == "systolic" else "qdq"),
            quantize_bias=quantize_bias,
            equalization=equalization,
            weight_rounding=weight_rounding,
            bias_correction=bias_correction,
            **quant_types(activation_type, weight_type),
        ),
    )
    say(quiet, f"wrote {output_path} ({count} tensor ranges, {method} on {folder})")
