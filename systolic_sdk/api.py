"""The public quantization APIs users already know.

- ``quantize_static``, ``quantize_dynamic``: signature-compatible with
  ``onnxruntime.quantization`` (same parameter names, order and defaults), so switching is
  a change of import. They also accept a ModelProto, return the quantized model, and take
  keyword-only extras (``backend``, ``quantize_bias``, ``strict``).
- ``quantize_qat``: a model with fake-quant QuantizeLinear/DequantizeLinear pairs becomes
  a quantized model that uses the pairs' scales.
- ``quantize``: the original onnxruntime API (``QuantizationMode`` IntegerOps/QLinearOps,
  static parameters as ``[zero_point, scale]``), ModelProto in, ModelProto out.

Each builds a :class:`~systolic_sdk.quantization.config.QuantConfig` and runs the core.
Files are written atomically; the input is never overwritten; bad input raises SdkError.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import onnx

from systolic_sdk.calibration.reader import CalibrationDataReader, replayable
from systolic_sdk.errors import QuantizationError, SdkError
from systolic_sdk.graph.io import check_output_path, load_model, save_model, write_bytes_atomic
from systolic_sdk.quantization.config import QuantConfig, TensorOverride
from systolic_sdk.quantization.overrides import check_overrides_fit_model, parse_tensor_overrides
from systolic_sdk.quantization.qat import strip_fake_quant
from systolic_sdk.quantization.types import OutputForm, QuantFormat, QuantizationMode, QuantType

PathLike = str | os.PathLike[str]


class CalibrationMethod(Enum):
    """onnxruntime.quantization.CalibrationMethod names, mapped to our calibrators."""

    MinMax = 0
    Entropy = 1
    Percentile = 2
    Distribution = 3

    def __str__(self) -> str:
        return self.name


_CALIBRATORS = {
    CalibrationMethod.MinMax: "minmax",
    CalibrationMethod.Entropy: "entropy",
    CalibrationMethod.Percentile: "percentile",
}
# extra_options keys that become calibrator options: key -> (option, converter)
_CALIB_OPTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "CalibMovingAverage": ("moving_average", bool),
    "CalibMovingAverageConstant": ("averaging_constant", float),
    "CalibPercentile": ("percentile", float),
    "CalibNumQuantizedBins": ("num_quantized_bins", int),
    "CalibNumBins": ("num_bins", int),
}
_LEGACY_OP_TYPES = frozenset({"Conv", "MatMul"})


# ---------------------------------------------------------------- onnxruntime-compatible API


def quantize_static(
    model_input: PathLike | onnx.ModelProto,
    model_output: PathLike | None,
    calibration_data_reader: CalibrationDataReader | None = None,
    quant_format: QuantFormat | Any = QuantFormat.QDQ,
    op_types_to_quantize: Sequence[str] | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activation_type: QuantType | Any = QuantType.QInt8,
    weight_type: QuantType | Any = QuantType.QInt8,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    use_external_data_format: bool = False,
    calibrate_method: CalibrationMethod | Any = CalibrationMethod.MinMax,
    calibration_providers: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    calibration_cache_path: PathLike | None = None,
    *,
    backend: str = "cpu",
    quantize_bias: bool = True,
    strict: bool = False,
    equalization: bool | None = None,
    weight_rounding: bool | None = None,
    bias_correction: bool | None = None,
) -> onnx.ModelProto:
    """Calibrate on ``calibration_data_reader`` and quantize; write ``model_output``.

    Parameters as in ``onnxruntime.quantization.quantize_static``. ``quant_format`` may
    also be ``OutputForm.INTEGER`` (ConvInteger/MatMulInteger with static activations).
    ``calibration_cache_path``: a calibration table in any format
    :func:`systolic_sdk.calibration.table.read_table` reads (onnxruntime's JSON cache,
    ``{tensor: [rmin, rmax]}``, text, FlatBuffers), read when it exists (no calibration
    run), else written after calibrating (onnxruntime's JSON form, full precision).
    ``model_output`` None writes nothing. ``use_external_data_format`` is accepted;
    models are written inline (models above 2 GiB are refused). ``equalization``,
    ``weight_rounding``, ``bias_correction``: the backend's fp32 preparation before
    calibration (cross-layer equalization; GPTQ weight rounding and bias correction
    measured on the calibration data); None takes the backend's default (``systolic``:
    weight rounding and bias correction; ``cpu`` has none). Returns the quantized model.
    """
    out = _check_output(model_output, model_input)
    model = load_model(model_input)
    config = _build_config(model, locals(), form=_as_form(quant_format), static=True)
    return _run(
        model,
        config,
        out,
        reader=calibration_data_reader,
        method=_calibrator(calibrate_method),
        providers=calibration_providers,
        cache=calibration_cache_path,
    )


def quantize_dynamic(
    model_input: PathLike | onnx.ModelProto,
    model_output: PathLike | None,
    op_types_to_quantize: Sequence[str] | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    weight_type: QuantType | Any = QuantType.QInt8,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    use_external_data_format: bool = False,
    extra_options: Mapping[str, Any] | None = None,
    *,
    backend: str = "cpu",
    quantize_bias: bool = True,
    strict: bool = False,
) -> onnx.ModelProto:
    """Quantize weights ahead of time and activations at run time (DynamicQuantizeLinear
    with ConvInteger/MatMulInteger). Parameters as in onnxruntime's ``quantize_dynamic``;
    ``model_output`` None writes nothing. Returns the quantized model.
    """
    out = _check_output(model_output, model_input)
    model = load_model(model_input)
    # DynamicQuantizeLinear emits uint8 activations
    args = {**locals(), "activation_type": QuantType.QUInt8}
    config = _build_config(model, args, form=OutputForm.INTEGER, static=False)
    return _run(model, config, out)


def quantize_qat(
    model_input: PathLike | onnx.ModelProto,
    model_output: PathLike | None,
    calibration_data_reader: CalibrationDataReader | None = None,
    quant_format: QuantFormat | Any = QuantFormat.QDQ,
    op_types_to_quantize: Sequence[str] | None = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activation_type: QuantType | Any = QuantType.QInt8,
    weight_type: QuantType | Any = QuantType.QInt8,
    nodes_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    use_external_data_format: bool = False,
    calibrate_method: CalibrationMethod | Any = CalibrationMethod.MinMax,
    calibration_providers: Sequence[str] | None = None,
    extra_options: Mapping[str, Any] | None = None,
    *,
    backend: str = "cpu",
    quantize_bias: bool = True,
    strict: bool = False,
) -> onnx.ModelProto:
    """Quantize a model whose scales were learned: fake-quant Q/DQ pairs become overrides.

    Every QuantizeLinear -> DequantizeLinear pair (and DequantizeLinear on constant
    weights) is removed and its scale/zero point fixed for that tensor; the float model
    is then quantized in ``quant_format``. Tensors the quantizer needs that carry no pair
    are calibrated on ``calibration_data_reader`` (an error names the first one if no
    reader is given). ``TensorQuantOverrides`` in ``extra_options`` take precedence.
    """
    out = _check_output(model_output, model_input)
    stripped = strip_fake_quant(load_model(model_input))
    learned = dict(stripped.overrides)
    config = _build_config(stripped.model, locals(), form=_as_form(quant_format), static=True)
    learned.update(config.tensor_overrides)
    config.tensor_overrides = learned
    # Learned scales belong to the trained weights: no equalization or bias correction.
    config.equalization = config.weight_rounding = config.bias_correction = False
    return _run(
        stripped.model,
        config,
        out,
        reader=calibration_data_reader,
        method=_calibrator(calibrate_method),
        providers=calibration_providers,
        missing_hint="it has no fake-quant pair",
    )


# ---------------------------------------------------------------- the original API


def quantize(
    model: onnx.ModelProto,
    per_channel: bool = False,
    nbits: int = 8,
    quantization_mode: QuantizationMode = QuantizationMode.IntegerOps,
    static: bool = False,
    asymmetric_input_types: bool = False,
    input_quantization_params: Mapping[str, Sequence[Any]] | None = None,
    output_quantization_params: Mapping[str, Sequence[Any]] | None = None,
) -> onnx.ModelProto:
    """The original onnxruntime ``quantize()``: Conv and MatMul become integer ops.

    ``IntegerOps``: ConvInteger/MatMulInteger. ``QLinearOps``: QLinearConv/QLinearMatMul,
    whose outputs need ``output_quantization_params``. ``static`` (or a ``*_Static``
    mode) quantizes activations with ``input_quantization_params``; dynamic computes
    them in the graph. Parameters map tensor names to ``[zero_point, scale]``; the zero
    point's numpy type (``np.uint8``/``np.int8``) gives the tensor's type.
    ``asymmetric_input_types``: signed weights, unsigned activations; otherwise both
    unsigned. Only ``nbits=8`` exists. Returns a new model; the input is not modified.
    """
    if isinstance(nbits, bool) or not isinstance(nbits, numbers.Integral) or nbits != 8:
        raise SdkError(f"nbits={nbits!r} is not supported: only 8-bit quantization exists")
    mode = _as_mode(quantization_mode)
    if mode.implied_static is not None:
        static = mode.implied_static
    if not isinstance(model, onnx.ModelProto):
        raise SdkError(f"quantize() takes an onnx.ModelProto, got {type(model).__name__}")
    qlinear = mode.base is QuantizationMode.QLinearOps
    form = OutputForm.QOPERATOR if qlinear else OutputForm.INTEGER
    weight_type = QuantType.QInt8 if asymmetric_input_types else QuantType.QUInt8
    config = QuantConfig(
        form=form,
        static=bool(static),
        activation_type=QuantType.QUInt8,
        weight_type=weight_type,
        per_channel=bool(per_channel),
        op_types_to_quantize=_LEGACY_OP_TYPES,
    )
    from systolic_sdk.quantization import prepare_model

    prepared = prepare_model(model, config)
    inputs = _legacy_params(input_quantization_params, "input_quantization_params")
    outputs = _legacy_params(output_quantization_params, "output_quantization_params")
    inits = {t.name for t in prepared.graph.initializer}
    for node in prepared.graph.node:
        if node.op_type not in _LEGACY_OP_TYPES or node.domain not in ("", "ai.onnx"):
            continue
        acts = [node.input[0]]
        if node.op_type == "MatMul" and node.input[1] not in inits:
            acts.append(node.input[1])
        if static:
            for name in acts:
                if name not in inputs:
                    raise SdkError(
                        f"tensor '{name}' (input of node '{node.name}'): static mode needs "
                        "its [zero_point, scale] in input_quantization_params"
                    )
        if qlinear and node.output[0] not in outputs:
            raise SdkError(
                f"tensor '{node.output[0]}' (output of node '{node.name}'): QLinearOps "
                "needs its [zero_point, scale] in output_quantization_params"
            )
    # IntegerOps outputs are float (int32 accumulators rescaled): output params do not apply.
    overrides = {**(inputs if static else {}), **(outputs if qlinear else {})}
    check_overrides_fit_model(overrides, prepared, "quantization params")
    config.tensor_overrides = overrides
    return _quantize_checked(prepared, config, {})


def _legacy_params(
    params: Mapping[str, Sequence[Any]] | None, what: str
) -> dict[str, TensorOverride]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise SdkError(f"{what}: expected a dict of tensor name -> [zero_point, scale]")
    entries = {}
    for name, value in params.items():
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise SdkError(f"{what}: tensor '{name}': expected [zero_point, scale], got {value!r}")
        entries[name] = [{"zero_point": value[0], "scale": value[1]}]
    parsed = parse_tensor_overrides(entries, source=what)
    return {
        name: ov if ov.quant_type is not None else _with_type(ov, QuantType.QUInt8)
        for name, ov in parsed.items()
    }


def _with_type(ov: TensorOverride, qtype: QuantType) -> TensorOverride:
    lo, hi = (0, 255) if qtype is QuantType.QUInt8 else (-128, 127)
    zp = ov.zero_point or ()
    if any(not lo <= z <= hi for z in zp):
        # a plain Python int outside uint8 but inside int8: the user meant a signed type
        qtype = QuantType.QInt8
    return dataclasses.replace(ov, quant_type=qtype)


# ---------------------------------------------------------------- shared pipeline


def _build_config(
    model: onnx.ModelProto, args: Mapping[str, Any], *, form: OutputForm, static: bool
) -> QuantConfig:
    """The QuantConfig of one public call; ``args`` are its arguments by name (the
    onnxruntime-compatible ones: activation_type, weight_type, per_channel, ...)."""
    extra = dict(args["extra_options"] or {})
    backend = args["backend"]
    nodes_to_quantize, nodes_to_exclude = args["nodes_to_quantize"], args["nodes_to_exclude"]
    overrides: dict[str, TensorOverride] = {}
    if extra.get("TensorQuantOverrides"):
        overrides = parse_tensor_overrides(extra["TensorQuantOverrides"], "TensorQuantOverrides")
        check_overrides_fit_model(overrides, model, "TensorQuantOverrides")
    _check_node_names(model, nodes_to_quantize, "nodes_to_quantize")
    _check_node_names(model, nodes_to_exclude, "nodes_to_exclude")
    _check_backend(backend)
    return QuantConfig(
        backend=backend,
        form=form,
        static=static,
        activation_type=_as_quant_type(args["activation_type"], "activation_type"),
        weight_type=_as_quant_type(args["weight_type"], "weight_type"),
        per_channel=bool(args["per_channel"]),
        reduce_range=bool(args["reduce_range"]),
        symmetric_activations=_opt_bool(extra, "ActivationSymmetric"),
        symmetric_weights=_opt_bool(extra, "WeightSymmetric"),
        quantize_bias=bool(extra.get("QuantizeBias", args["quantize_bias"])),
        op_types_to_quantize=_names(args["op_types_to_quantize"], "op_types_to_quantize"),
        nodes_to_quantize=_names(nodes_to_quantize, "nodes_to_quantize"),
        nodes_to_exclude=_names(nodes_to_exclude, "nodes_to_exclude") or frozenset(),
        tensor_overrides=overrides,
        strict=bool(args["strict"]),
        extra_options=extra,
        equalization=args.get("equalization"),
        weight_rounding=args.get("weight_rounding"),
        bias_correction=args.get("bias_correction"),
    )


def _run(
    model: onnx.ModelProto,
    config: QuantConfig,
    out: Path | None,
    *,
    reader: CalibrationDataReader | None = None,
    method: str = "minmax",
    providers: Sequence[str] | None = None,
    cache: PathLike | None = None,
    missing_hint: str = "",
) -> onnx.ModelProto:
    from systolic_sdk.quantization import prepare_model, tensors_to_calibrate

    prepared = prepare_model(model, config)
    _check_requested_nodes(prepared, config)
    if config.static:
        from systolic_sdk.backends import get_backend

        backend = get_backend(config.backend)
        if backend.float_prep is not None:
            reader = replayable(reader)

        def calibrate_as_asked(m: onnx.ModelProto, r, names: list[str]):
            extra = config.extra_options  # no progress bar: one is the final calibration's
            return _calibrate(m, r, names, method, providers, extra, progress=False)

        # The preparation's int8 simulation calibrates with the method and options the
        # quantizer will use (a calibration cache, if any, serves only the final ranges).
        transformed = backend.prepare_float(prepared, reader, config, calibrate_as_asked)
        if transformed is not prepared:  # new nodes: names, shapes
            prepared = prepare_model(transformed, config)
        if reader is not None and backend.float_prep is not None:
            reader.rewind()
    fixed = {n for n, ov in config.tensor_overrides.items() if ov.scale and ov.zero_point}
    wanted = [n for n in tensors_to_calibrate(prepared, config, prepared=True) if n not in fixed]
    ranges: dict[str, tuple[float, float]] = {}
    if wanted:
        cache_path = Path(cache) if cache is not None else None
        if cache_path is not None and cache_path.exists():
            ranges = _read_cache(cache_path, method)
        elif reader is not None:
            ranges = _calibrate(prepared, reader, wanted, method, providers, config.extra_options)
            if cache_path is not None:
                _write_cache(cache_path, ranges, method)
        missing = [n for n in wanted if n not in ranges]
        if missing:
            why = f"{missing_hint} and " if missing_hint else ""
            raise SdkError(
                f"tensor '{missing[0]}' needs a range: {why}no calibration data covers it "
                "(give a calibration data reader)"
            )
        if config.extra_options.get("CalibTensorRangeSymmetric"):
            ranges = {
                n: (-max(abs(a), abs(b)), max(abs(a), abs(b))) for n, (a, b) in ranges.items()
            }
    quantized = _quantize_checked(prepared, config, ranges)
    if out is not None:
        save_output(quantized, out)
    return quantized


def save_output(model: onnx.ModelProto, out: PathLike) -> Path:
    """Write ``model`` atomically; an OS failure is a one-line SdkError and leaves nothing."""
    try:
        return save_model(model, out)
    except OSError as exc:
        raise SdkError(f"{out}: cannot write ({exc.strerror or exc})") from None


def _check_requested_nodes(model: onnx.ModelProto, config: QuantConfig) -> None:
    """Each node named in nodes_to_quantize must be quantizable by the backend in the form."""
    if not config.nodes_to_quantize:
        return
    from systolic_sdk.backends import get_backend

    backend = get_backend(config.backend)
    for node in model.graph.node:
        if node.name not in config.nodes_to_quantize or node.name in config.nodes_to_exclude:
            continue
        rule = backend.rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None or not rule.supports(node, config.form):
            raise QuantizationError(
                f"node '{node.name}' ({node.op_type}) in nodes_to_quantize cannot be quantized "
                f"by the '{backend.name}' backend in the {config.form.value} form"
            )


def _quantize_checked(
    model: onnx.ModelProto, config: QuantConfig, ranges: Mapping[str, tuple[float, float]]
) -> onnx.ModelProto:
    """Run the core and refuse to hand back a model that onnx.checker rejects.

    Backends whose graphs carry custom ops or attributes (``check_standard_onnx`` off)
    are checked by their own verifier inside ``quantize_model`` instead.
    """
    from systolic_sdk.backends import get_backend
    from systolic_sdk.quantization import quantize_model

    quantized = quantize_model(model, config, dict(ranges), prepared=True)
    if not get_backend(config.backend).check_standard_onnx:
        return quantized
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise QuantizationError(f"the quantized model fails onnx.checker: {first}") from None
    return quantized


def _calibrate(
    model: onnx.ModelProto,
    reader: CalibrationDataReader,
    names: list[str],
    method: str,
    providers: Sequence[str] | None,
    extra: Mapping[str, Any],
    progress: bool | None = None,
) -> dict[str, tuple[float, float]]:
    from systolic_sdk.calibration import calibrate

    options: dict[str, Any] = {} if progress is None else {"progress": progress}
    for key, (option, convert) in _CALIB_OPTIONS.items():
        if key in extra and extra[key] is not None:
            options[option] = convert(extra[key])
    if not options.get("moving_average"):
        options.pop("averaging_constant", None)
        options.pop("moving_average", None)
    if method != "percentile":
        options.pop("percentile", None)
    if method != "entropy":
        options.pop("num_quantized_bins", None)
    if method == "minmax":
        options.pop("num_bins", None)
    if providers:
        options["providers"] = list(providers)
    return calibrate(model, reader, names, method=method, **options)


def _read_cache(path: Path, method: str) -> dict[str, tuple[float, float]]:
    """Ranges from a calibration cache in any calibration-table format
    (:func:`systolic_sdk.calibration.table.read_table`: our JSON, text or FlatBuffers
    tables, onnxruntime's TensorsData JSON or calibration.cache); an onnxruntime cache
    records its calibration method, which must match ``method``."""
    from systolic_sdk.calibration.table import read_table

    if not path.is_file():
        raise SdkError(f"{path}: calibration cache path is not a file")
    cached = _cached_method(path)
    if cached is not None and cached != _method_tag(method):
        raise SdkError(
            f"{path}: calibration cache was made with {cached}, not {_method_tag(method)}; "
            "delete it or pass the matching calibrate_method"
        )
    return read_table(path)


def _cached_method(path: Path) -> str | None:
    """The calibration method an onnxruntime TensorsData cache records, else None."""
    try:
        with path.open("rb") as f:
            if f.read(1024).lstrip()[:1] != b"{":
                return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # read_table reports what is wrong with the file
    if not isinstance(data, dict):
        return None
    cached = data.get("calibration_method") if data.get("CLS") == "TensorsData" else None
    if isinstance(cached, dict):
        cached = str(cached.get("value", "")).split(".")[-1]
    return str(cached) if cached else None


def _write_cache(path: Path, ranges: Mapping[str, tuple[float, float]], method: str) -> None:
    """Write ``ranges`` in onnxruntime's calibration-cache form (readable by both tools)."""
    out = check_output_path(path)

    def number(v: float) -> dict[str, Any]:
        # full precision (JSON writes a float's repr), so reading back is bit-identical
        return {"data": float(v), "dtype": "float32", "CLS": "numpy.array"}

    payload = {
        "CLS": "TensorsData",
        "data": {
            n: {"lowest": number(lo), "highest": number(hi), "CLS": "TensorData"}
            for n, (lo, hi) in ranges.items()
        },
        "calibration_method": {
            "CLS": "CalibrationMethod",
            "value": f"CalibrationMethod.{_method_tag(method)}",
        },
        "smooth_quant": False,
    }
    write_bytes_atomic(out, json.dumps(payload, indent=1).encode("utf-8"))


def _method_tag(method: str) -> str:
    """onnxruntime's CalibrationMethod name for one of our calibrators (else our name)."""
    names = {v: k.name for k, v in _CALIBRATORS.items()}
    return names.get(method, method)


# ---------------------------------------------------------------- argument coercion


def _check_output(model_output: PathLike | None, model_input: Any) -> Path | None:
    if model_output is None:
        return None
    if isinstance(model_output, onnx.ModelProto):
        raise SdkError("model_output must be a file path, not a ModelProto")
    src = None if isinstance(model_input, onnx.ModelProto) else model_input
    return check_output_path(model_output, src)


def _check_node_names(model: onnx.ModelProto, names: Iterable[str] | None, what: str) -> None:
    if not names:
        return
    known = {n.name for n in model.graph.node}
    for name in names:
        if name not in known:
            raise SdkError(f"node '{name}' in {what} is not in the model")


def _check_backend(backend: str) -> None:
    from systolic_sdk.backends import available_backends

    names = list(available_backends())
    if backend not in names:
        raise SdkError(f"unknown backend '{backend}' (available: {', '.join(names)})")


def _names(values: Iterable[str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    out = []
    for v in values:
        if not isinstance(v, str) or not v:
            raise SdkError(f"{what}: expected names (strings), got {v!r}")
        out.append(v)
    return frozenset(out)


def _opt_bool(extra: Mapping[str, Any], key: str) -> bool | None:
    return None if extra.get(key) is None else bool(extra[key])


def _by_name(value: Any, enum: type[Enum], what: str) -> Any:
    """Accept our enum, a same-named member of onnxruntime's enum, or a member name."""
    if isinstance(value, enum):
        return value
    name = getattr(value, "name", value)
    if isinstance(name, str):
        for member in enum:
            if member.name.lower() == name.lower():
                return member
    choices = ", ".join(m.name for m in enum)
    raise SdkError(f"{what}: unknown value {value!r} (choose from {choices})")


def _as_quant_type(value: Any, what: str) -> QuantType:
    if isinstance(value, str):
        try:
            return QuantType.from_string(value)
        except ValueError as exc:
            raise SdkError(f"{what}: {exc}") from None
    return _by_name(value, QuantType, what)


def _as_form(value: Any) -> OutputForm:
    if isinstance(value, OutputForm):
        return value
    if isinstance(value, str) and value.lower() in ("integer", "integerops"):
        return OutputForm.INTEGER
    fmt = _by_name(value, QuantFormat, "quant_format")
    return OutputForm.QDQ if fmt is QuantFormat.QDQ else OutputForm.QOPERATOR


def _as_mode(value: Any) -> QuantizationMode:
    return _by_name(value, QuantizationMode, "quantization_mode")


def _calibrator(value: Any) -> str:
    if isinstance(value, str) and not hasattr(value, "name"):
        try:
            value = _by_name(value, CalibrationMethod, "calibrate_method")
        except SdkError:
            return value.lower()  # one of our own calibrators by name ("mse", ...)
    method = _by_name(value, CalibrationMethod, "calibrate_method")
    if method not in _CALIBRATORS:
        raise SdkError(
            f"calibrate_method {method.name} is not available "
            f"(choose from {', '.join(m.name for m in _CALIBRATORS)})"
        )
    return _CALIBRATORS[method]


__all__ = [
    "CalibrationDataReader",
    "CalibrationMethod",
    "QuantFormat",
    "QuantType",
    "QuantizationMode",
    "quantize",
    "quantize_dynamic",
    "quantize_qat",
    "quantize_static",
]
