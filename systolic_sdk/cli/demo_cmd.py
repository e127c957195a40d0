"""``systolic-quantize demo``: quantize the shipped model for the Systolic backend, validate
it (emulator against onnxruntime on its standard-ONNX lowering) and score it against fp32."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
import onnx

from systolic_sdk.cli.common import (
    CONTEXT_SETTINGS,
    FORMATS,
    backend_option,
    quant_type_options,
    quant_types,
    say,
    sdk_errors,
)
from systolic_sdk.errors import SdkError
from systolic_sdk.quantization.types import OutputForm, QuantType

if TYPE_CHECKING:
    from runtime_emulator.validate import ValidationReport

DEFAULT_MODEL_DIR = Path("models") / "digits_cnn"
EVAL_BATCH = 250


@dataclass
class DemoResult:
    """What the demo measured (accuracies are fractions in [0, 1])."""

    model_dir: Path
    description: str  # e.g. "cpu backend, qdq static, qint8 activations, qint8 weights"
    samples: int
    fp32_accuracy: float
    quantized_accuracy: float
    agreement: float  # fraction of samples where fp32 and quantized predict the same class
    output: Path | None = None
    quantized_model: onnx.ModelProto | None = field(default=None, repr=False)
    #: Backends with a standard-ONNX lowering (systolic): the validation report.
    validation: ValidationReport | None = field(default=None, repr=False)


def default_model_dir() -> Path:
    """``models/digits_cnn`` under the current folder, else next to the installed package."""
    here = Path.cwd() / DEFAULT_MODEL_DIR
    if (here / "model.onnx").exists():
        return here
    import systolic_sdk

    repo = Path(systolic_sdk.__file__).resolve().parent.parent / DEFAULT_MODEL_DIR
    if (repo / "model.onnx").exists():
        return repo
    raise SdkError(
        f"{DEFAULT_MODEL_DIR}: no shipped model here or next to the package; pass MODEL_DIR"
    )


def run_demo(
    model_dir: Path | str | None = None,
    *,
    backend: str = "systolic",
    quant_format: str | None = None,
    per_channel: bool = False,
    activation_type: QuantType = QuantType.QInt8,
    weight_type: QuantType = QuantType.QInt8,
    layout: str | None = None,
    output: Path | str | None = None,
) -> DemoResult:
    """Quantize ``model_dir``/model.onnx (calibrated on calib.npz) and score both models.

    ``quant_format`` is qdq or qoperator (static, calibrated) or integer (dynamic); None
    is qoperator for systolic, qdq otherwise. ``layout`` (systolic): nchw or nhwc. On
    test.npz (``input``, ``label``) the fp32 model runs in onnxruntime and the quantized
    one as its backend runs it (the emulator for systolic, onnxruntime for cpu). A backend
    with a standard-ONNX lowering is also validated on the test split (bit-exactness of
    every tensor against onnxruntime on the lowering). Writes only ``output``.
    """
    from systolic_sdk import api
    from systolic_sdk.calibration import ArrayReader
    from systolic_sdk.graph.io import check_output_path, load_model

    folder = Path(model_dir) if model_dir is not None else default_model_dir()
    model_path = folder / "model.onnx"
    out = check_output_path(output, model_path) if output is not None else None
    model = load_model(model_path)
    input_name = model.graph.input[0].name
    calib = _arrays(folder / "calib.npz", ("input",))["input"]
    test = _arrays(folder / "test.npz", ("input", "label"))
    fmt = (quant_format or ("qoperator" if backend == "systolic" else "qdq")).lower()
    if fmt not in FORMATS:
        raise SdkError(f"unknown format '{quant_format}' (choose from {', '.join(FORMATS)})")
    if layout is not None and backend != "systolic":
        raise SdkError("--layout applies to --backend systolic only")
    if fmt == "integer":
        mode = "dynamic"
        quantized = api.quantize_dynamic(
            model, None, per_channel=per_channel, weight_type=weight_type, backend=backend
        )
        activation_type = QuantType.QUInt8
    else:
        mode = "static"
        reader = ArrayReader({input_name: calib}, batch_size=50)
        quantized = api.quantize_static(
            model,
            None,
            reader,
            quant_format=OutputForm.QDQ if fmt == "qdq" else OutputForm.QOPERATOR,
            per_channel=per_channel,
            activation_type=activation_type,
            weight_type=weight_type,
            backend=backend,
            extra_options={"SystolicLayout": layout} if layout else None,
        )
    from systolic_sdk.backends import get_backend

    x, labels = test["input"], test["label"]
    ref = _predict(_onnxruntime_runner(model), input_name, x)
    target = get_backend(backend)
    prepared = mode == "static" and target.float_prep is not None
    got = _predict(functools.partial(target.run, quantized), input_name, x)
    validation = None
    if target.lowering is not None:
        from runtime_emulator.validate import validate

        feeds = [{input_name: x[i : i + EVAL_BATCH]} for i in range(0, len(x), EVAL_BATCH)]
        validation = validate(quantized, model, feeds, lowering=target.lower)
    if out is not None:
        api.save_output(quantized, out)
    granularity = "per-channel" if per_channel else "per-tensor"
    return DemoResult(
        model_dir=folder,
        description=(
            f"{backend} backend{f' {layout.upper()}' if layout else ''}, {fmt} {mode}, "
            f"{granularity}, "
            f"{activation_type} activations, {weight_type} weights"
            + (", GPTQ weights, bias-corrected" if prepared else "")
        ),
        samples=len(labels),
        fp32_accuracy=float(np.mean(ref == labels)),
        quantized_accuracy=float(np.mean(got == labels)),
        agreement=float(np.mean(ref == got)),
        output=out,
        quantized_model=quantized,
        validation=validation,
    )


def _arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    if not path.exists():
        raise SdkError(f"{path}: no such file (the demo needs model.onnx, calib.npz, test.npz)")
    try:
        with np.load(path) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise SdkError(f"{path}: no array named '{missing[0]}'")
            return {k: data[k] for k in keys}
    except (OSError, ValueError) as exc:
        raise SdkError(f"{path}: cannot read ({exc})") from None


def _onnxruntime_runner(model: onnx.ModelProto) -> Callable[[dict], list[np.ndarray]]:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SdkError(f"onnxruntime cannot load the model: {first}") from None
    return lambda feeds: sess.run(None, feeds)


def _predict(run: Callable[[dict], list[np.ndarray]], input_name: str, x: np.ndarray) -> np.ndarray:
    """Predicted classes (argmax of the first output), in batches."""
    preds = [
        np.asarray(run({input_name: x[i : i + EVAL_BATCH]})[0]).argmax(axis=1)
        for i in range(0, len(x), EVAL_BATCH)
    ]
    return np.concatenate(preds)


@click.command(
    "demo",
    context_settings=CONTEXT_SETTINGS,
    short_help="Quantize the shipped model for Systolic, validate it, score it.",
)
@click.argument("model_dir", required=False, type=click.Path(path_type=Path))
@backend_option(default="systolic")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS, case_sensitive=False),
    help="qdq/qoperator: static, calibrated on calib.npz; integer: dynamic.  "
    "[default: qoperator for systolic, qdq for cpu]",
)
@click.option("--per-channel", is_flag=True, help="One weight scale per output channel.")
@quant_type_options()
@click.option(
    "--layout",
    type=click.Choice(["nchw", "nhwc"]),
    help="Systolic backend: nhwc writes QLinearConv_nhwc.  [default: nchw]",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Also write the quantized model."
)
@sdk_errors
def demo_command(
    model_dir: Path | None,
    backend: str,
    fmt: str | None,
    per_channel: bool,
    activation_type: str,
    weight_type: str,
    layout: str | None,
    output: Path | None,
) -> None:
    """Quantize the shipped model for the Systolic accelerator, validate it, and compare
    it with fp32 on its test split.

    The int8 model runs in the bit-exact emulator; every tensor is compared with
    onnxruntime running the model's standard-ONNX lowering (what the accelerator computes,
    checked before deployment). MODEL_DIR holds model.onnx, calib.npz (key 'input') and
    test.npz (keys 'input', 'label'); it defaults to models/digits_cnn. Nothing is written
    unless -o is given. Exit code 1 when the validation finds an unexplained divergence.

    \b
    Examples:
      systolic-quantize demo
      systolic-quantize demo --layout nhwc -o digits.systolic.onnx
      systolic-quantize demo --backend cpu --format qoperator --per-channel \\
          --activation-type quint8
    """
    result = run_demo(
        model_dir,
        backend=backend,
        quant_format=fmt,
        per_channel=per_channel,
        layout=layout,
        output=output,
        **quant_types(activation_type, weight_type),
    )
    say(False, f"model:     {result.model_dir / 'model.onnx'}")
    say(False, f"quantized: {result.description}")
    say(
        False,
        f"fp32 accuracy:      {100 * result.fp32_accuracy:6.2f} %  ({result.samples} samples)",
    )
    say(False, f"quantized accuracy: {100 * result.quantized_accuracy:6.2f} %")
    say(False, f"agreement:          {100 * result.agreement:6.2f} %  (same predicted class)")
    report = result.validation
    if report is not None:
        exact = sum(t.bit_exact for t in report.tensors)
        say(
            False,
            f"validation:         {'bit-exact' if report.bit_exact else 'DIVERGES'}, "
            f"{exact}/{len(report.tensors)} tensors (emulator vs onnxruntime on the lowering)",
        )
        if report.first_divergence is not None:
            d = report.first_divergence
            say(False, f"first divergence:   {d.tensor} at {list(d.index)} ({d.cause})")
    if result.output is not None:
        say(False, f"wrote {result.output}")
    if report is not None and not report.ok:
        raise SystemExit(1)
