"""Helpers shared by the command modules: error conversion, option parsing, output."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from systolic_sdk.errors import SdkError

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
QUANT_TYPES = ("qint8", "quint8", "qint16", "quint16")
FORMATS = ("qdq", "qoperator", "integer")


def sdk_errors(func: F) -> F:
    """Turn an SdkError raised by the command body into ``error: ...`` and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SdkError as exc:
            from systolic_sdk.cli import UserError

            raise UserError(one_line(str(exc))) from None

    return wrapper  # type: ignore[return-value]


def one_line(message: str) -> str:
    """The message's first line (errors are one line; guard against stray newlines)."""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def split_names(values: Iterable[str] | None) -> list[str] | None:
    """Names given as repeated options and/or comma-separated lists; None if none given."""
    if not values:
        return None
    names = [part.strip() for value in values for part in value.split(",")]
    names = [n for n in names if n]
    return names or None


def backend_choices() -> list[str]:
    """Registered backends, for --help (falls back to 'cpu' while none is registered)."""
    try:
        from systolic_sdk.backends import available_backends

        return list(available_backends()) or ["cpu"]
    except ImportError:  # the backend registry is not importable yet
        return ["cpu"]


def backend_option(default: str = "cpu") -> Callable[[F], F]:
    """``--backend NAME``."""
    return click.option(
        "--backend",
        default=default,
        show_default=True,
        help=f"Target: {', '.join(backend_choices())} (cpu = stock onnxruntime).",
    )


def quant_type_options(
    activation_default: str = "qint8",
    *,
    snake_case: bool = False,
    activation_help: str | None = None,
) -> Callable[[F], F]:
    """``--activation-type`` and ``--weight-type`` (also spelled with underscores when
    ``snake_case``), as the strings of QUANT_TYPES; weights default to qint8."""
    helps = {
        "activation": activation_help or "Element type of quantized activations.",
        "weight": "Element type of quantized weights.",
    }
    defaults = {"activation": activation_default, "weight": "qint8"}

    def decorate(func: F) -> F:
        for kind in ("weight", "activation"):
            names = [f"--{kind}-type"] + ([f"--{kind}_type"] if snake_case else [])
            func = click.option(
                *names,
                f"{kind}_type",
                type=click.Choice(QUANT_TYPES, case_sensitive=False),
                default=defaults[kind],
                show_default=True,
                help=helps[kind],
            )(func)
        return func

    return decorate


def quant_types(activation_type: str, weight_type: str) -> dict[str, Any]:
    """The API's ``activation_type``/``weight_type`` arguments from the option strings."""
    from systolic_sdk.quantization.types import QuantType

    return {
        "activation_type": QuantType.from_string(activation_type),
        "weight_type": QuantType.from_string(weight_type),
    }


def overrides_extra(path: Any) -> dict[str, Any]:
    """``extra_options`` holding the tensor overrides of a JSON file (none when None)."""
    if path is None:
        return {}
    from systolic_sdk.quantization.overrides import load_tensor_overrides, overrides_to_json

    return {"TensorQuantOverrides": overrides_to_json(load_tensor_overrides(path))}


def say(quiet: bool, message: str) -> None:
    """Print a progress/result line unless --quiet."""
    if not quiet:
        click.echo(message)


def float_prep_options(func: F) -> F:
    """--equalization, --weight-rounding and --bias-correction (each with a --no- form)."""
    func = click.option(
        "--bias-correction/--no-bias-correction",
        "bias_correction",
        default=None,
        help="Correct Conv/Gemm/MatMul biases so each layer's mean output (after its "
        "Relu/ReLU6) matches fp32's, measured on the calibration data layer by layer in the "
        "int8 model.  [default: on for --backend systolic]",
    )(func)
    func = click.option(
        "--weight-rounding/--no-weight-rounding",
        "weight_rounding",
        default=None,
        help="Choose each layer's int8 weights with GPTQ on the calibration data as the int8 "
        "model feeds the layer (errors compensated across input channels) instead of "
        "rounding to nearest.  [default: on for --backend systolic]",
    )(func)
    return click.option(
        "--equalization/--no-equalization",
        "equalization",
        default=None,
        help="Cross-layer equalization before calibrating (evens out per-channel weight "
        "ranges, at the cost of the activations').  [default: off]",
    )(func)
