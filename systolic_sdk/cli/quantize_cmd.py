"""``systolic-quantize quantize``: quantize an fp32 ONNX model to a file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
import onnx

from systolic_sdk.calibration import METHODS
from systolic_sdk.cli.common import (
    CONTEXT_SETTINGS,
    FORMATS,
    backend_option,
    float_prep_options,
    overrides_extra,
    quant_type_options,
    quant_types,
    say,
    sdk_errors,
    split_names,
)
from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import check_output_path, load_model
from systolic_sdk.quantization.types import OutputForm

CALIBRATION_METHODS = tuple(METHODS)

EPILOG = """\b
Examples:
  # static QDQ int8 (the default), calibrated on a .npz of model inputs
  systolic-quantize quantize model.onnx -o model.int8.onnx --calibration-data calib.npz
\b
  # QOperator form (QLinearConv, QLinearMatMul, ...), per-channel weights, uint8 activations
  systolic-quantize quantize model.onnx -o q.onnx --format qoperator --per-channel \\
      --activation-type quint8 --calibration-data test_data_sets/
\b
  # dynamic: weights now, activations at run time (ConvInteger/MatMulInteger); no data needed
  systolic-quantize quantize model.onnx -o q.onnx --mode dynamic
\b
  # the Systolic accelerator: int8, zero point 0, per-tensor, ReLU fused, NHWC convs;
  # GPTQ weight rounding and bias correction run first (--no-weight-rounding and
  # --no-bias-correction turn them off; --equalization adds cross-layer equalization)
  systolic-quantize quantize model.onnx -o q.onnx --backend systolic --layout nhwc \\
      --calibration-data calib.npz
\b
  # keep the first conv in float; fix one tensor's scale from a JSON overrides file
  systolic-quantize quantize model.onnx -o q.onnx --calibration-data calib.npz \\
      --nodes-to-exclude /conv1/Conv --tensor-quant-overrides overrides.json
\b
Calibration data: a .npy/.npz file (arrays named after the model inputs, or one array for
a one-input model), a folder of them, an ONNX test-data folder (test_data_set_*/input_*.pb),
or a folder of images. Overrides JSON: {"tensor": [{"scale": 0.005, "zero_point": 12}]}
(one dict per tensor, or one per channel).
"""


@click.command(
    "quantize",
    context_settings=CONTEXT_SETTINGS,
    epilog=EPILOG,
    short_help="Quantize an fp32 model (cpu or systolic backend; static or dynamic).",
)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Quantized model path."
)
@backend_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS, case_sensitive=False),
    default=None,
    help="qdq: QuantizeLinear/DequantizeLinear around float ops; qoperator: QLinearConv, "
    "QLinearMatMul, ...; integer: ConvInteger/MatMulInteger. "
    "[default: qdq (qoperator for --backend systolic); integer with --mode dynamic]",
)
@click.option(
    "--mode",
    type=click.Choice(("static", "dynamic"), case_sensitive=False),
    default=None,
    help="static: activation scales from calibration data; dynamic: computed at run time. "
    "[default: static; dynamic with --format integer]",
)
@click.option("--per-channel", is_flag=True, help="One weight scale per output channel.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (CPUs without VNNI).")
@quant_type_options(
    activation_help="Element type of quantized activations (dynamic mode: always quint8)."
)
@click.option(
    "--calibration-data",
    type=click.Path(path_type=Path),
    help="File or folder of representative inputs (needed for static mode).",
)
@click.option(
    "--calibration-method",
    type=click.Choice(CALIBRATION_METHODS, case_sensitive=False),
    default="minmax",
    show_default=True,
)
@click.option("--dataset-size", type=click.IntRange(min=1), help="Use at most N samples.")
@click.option(
    "--skip-nonfinite",
    is_flag=True,
    help="Skip calibration samples holding NaN or Inf (with a warning) instead of refusing.",
)
@click.option(
    "--preprocess", default=None, help="Image preprocessing for image folders (calibration)."
)
@click.option(
    "--op-types",
    multiple=True,
    metavar="OPS",
    help="Quantize only these op types (comma-separated or repeated), e.g. Conv,Gemm.",
)
@click.option(
    "--nodes-to-quantize",
    multiple=True,
    metavar="NODES",
    help="Quantize only these nodes (names, comma-separated or repeated).",
)
@click.option(
    "--nodes-to-exclude",
    multiple=True,
    metavar="NODES",
    help="Keep these nodes in float (names, comma-separated or repeated).",
)
@click.option(
    "--tensor-quant-overrides",
    type=click.Path(path_type=Path),
    help="JSON file fixing scales/zero points of named tensors.",
)
@click.option(
    "--quantize-bias/--no-quantize-bias",
    default=True,
    show_default=True,
    help="Quantize Conv/Gemm biases to int32 (qdq form; QOperator ops always take int32).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Refuse (instead of warn and adapt) options the backend cannot honour.",
)
@click.option(
    "--layout",
    type=click.Choice(["nchw", "nhwc"]),
    help="Systolic backend: nhwc writes QLinearConv_nhwc (HWIO weights, Transposes only at "
    "NCHW boundaries, an eligible MaxPool fused).  [default: nchw]",
)
@click.option(
    "--ops-domain",
    type=click.Choice(["com.systolic", "gemmini-ort"]),
    help="Systolic backend: where QLinearRelu/QLinearConv_nhwc live: the SDK's com.systolic "
    "domain (onnx.checker accepts it) or the default domain, as the Gemmini fork of "
    "onnxruntime registers them.  [default: com.systolic]",
)
@float_prep_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@sdk_errors
def quantize_command(
    model: Path,
    output: Path,
    backend: str,
    fmt: str | None,
    mode: str | None,
    per_channel: bool,
    reduce_range: bool,
    activation_type: str,
    weight_type: str,
    calibration_data: Path | None,
    calibration_method: str,
    dataset_size: int | None,
    skip_nonfinite: bool,
    preprocess: str | None,
    op_types: tuple[str, ...],
    nodes_to_quantize: tuple[str, ...],
    nodes_to_exclude: tuple[str, ...],
    tensor_quant_overrides: Path | None,
    quantize_bias: bool,
    strict: bool,
    layout: str | None,
    ops_domain: str | None,
    equalization: bool | None,
    weight_rounding: bool | None,
    bias_correction: bool | None,
    quiet: bool,
) -> None:
    """Quantize the fp32 ONNX MODEL and write it to OUTPUT.

    Static mode calibrates activation ranges on --calibration-data; dynamic mode needs
    no data. The output is written atomically and never over the input; on any error
    nothing is written.
    """
    from systolic_sdk import api

    mode = (mode or ("dynamic" if fmt == "integer" else "static")).lower()
    default_fmt = "qoperator" if backend == "systolic" else "qdq"
    fmt = (fmt or ("integer" if mode == "dynamic" else default_fmt)).lower()
    systolic_extra = {
        key: value
        for key, value in (("SystolicLayout", layout), ("SystolicOpsDomain", ops_domain))
        if value is not None
    }
    if systolic_extra and backend != "systolic":
        raise SdkError("--layout and --ops-domain apply to --backend systolic only")
    if mode == "dynamic" and fmt != "integer":
        raise SdkError(
            f"--mode dynamic produces integer ops (ConvInteger/MatMulInteger); "
            f"use --format integer, not --format {fmt}"
        )
    if mode == "dynamic" and calibration_data is not None:
        raise SdkError("--calibration-data is not used in dynamic mode; drop it or use static")
    if mode == "static" and calibration_data is None and tensor_quant_overrides is None:
        raise SdkError(
            f"{model}: static quantization needs --calibration-data PATH (or use --mode dynamic)"
        )
    out = check_output_path(output, model, calibration_data, tensor_quant_overrides)
    fp32 = load_model(model)
    extra = {**overrides_extra(tensor_quant_overrides), **systolic_extra}
    types = quant_types(activation_type, weight_type)
    common = dict(
        op_types_to_quantize=split_names(op_types),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=types["weight_type"],
        nodes_to_quantize=split_names(nodes_to_quantize),
        nodes_to_exclude=split_names(nodes_to_exclude),
        extra_options=extra,
        backend=backend,
        quantize_bias=quantize_bias,
        strict=strict,
    )
    if mode == "dynamic":
        if equalization or weight_rounding or bias_correction:
            raise SdkError(
                "--equalization, --weight-rounding and --bias-correction apply to static mode only"
            )
        quantized = api.quantize_dynamic(fp32, None, **common)
    else:
        reader = None
        if calibration_data is not None:
            from systolic_sdk.calibration import open_source

            reader = open_source(
                calibration_data, fp32, dataset_size=dataset_size, preprocess=preprocess
            )
            reader.collect_options = {"skip_nonfinite": skip_nonfinite}
            if quiet:
                reader.collect_options["progress"] = False
        quant_format = OutputForm.INTEGER if fmt == "integer" else fmt
        quantized = api.quantize_static(
            fp32,
            None,
            reader,
            quant_format=quant_format,
            activation_type=types["activation_type"],
            calibrate_method=calibration_method,
            equalization=equalization,
            weight_rounding=weight_rounding,
            bias_correction=bias_correction,
            **common,
        )
    check_output_path(out, model, calibration_data)  # the folder may have gone meanwhile
    api.save_output(quantized, out)
    say(quiet, f"wrote {out} ({fmt}, {mode}; {_summary(quantized)})")


def _summary(model: onnx.ModelProto) -> str:
    """Counts of the quantization-related ops in the written graph."""
    counts = Counter(n.op_type for n in model.graph.node)
    keys = [
        k
        for k in sorted(counts)
        if k.startswith(("QLinear", "Quantize", "Dequantize", "DynamicQuantize", "QGemm"))
        or k.endswith("Integer")
    ]
    if not keys:
        return "no op was quantized"
    return ", ".join(f"{counts[k]} {k}" for k in keys)
