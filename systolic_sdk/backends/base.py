"""The Backend declaration: what a target accepts, its op rules, passes and hooks.

A backend is data plus a few hooks. The quantization core reads these fields and
never tests a backend's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from systolic_sdk.errors import QuantizationError, SdkError
from systolic_sdk.quantization import params as _params
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.rules.base import OpRule
from systolic_sdk.quantization.types import OutputForm, QuantType
from systolic_sdk.quantization.warn import warn

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]
#: A pass over the rewritten model that may read the run's options.
PostPass = Callable[[onnx.ModelProto, QuantConfig], onnx.ModelProto]
Ranges = dict[str, tuple[float, float]]
RangePass = Callable[[onnx.ModelProto, Ranges], Ranges]
Runner = Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], list[np.ndarray]]
#: ``(model, reader, tensor names) -> ranges``: the calibration the quantizer will run.
Calibrate = Callable[[onnx.ModelProto, Any, list[str]], Ranges]
#: ``(fp32 model, calibration data reader or None, config, calibrate or None) -> fp32 model``
FloatPrep = Callable[[onnx.ModelProto, Any, QuantConfig, Calibrate | None], onnx.ModelProto]

ALL_TYPES = frozenset(QuantType)
#: QuantConfig switches of the fp32 preparation (None: the backend's default).
PREP_SWITCHES = ("equalization", "weight_rounding", "bias_correction")


@dataclass(frozen=True)
class Backend:
    """A quantization target.

    Fields are data; the callables are hooks with defaults from ``quantization.params``.

    - ``activation_params(rmin, rmax, qtype, symmetric, reduce_range) -> QuantParams``
    - ``weight_params(w, qtype, per_channel, axis, symmetric, reduce_range) -> QuantParams``
    - ``quantize_weight(w, params) -> integer array`` (constants: weights, constant inputs)
    - ``quantize_bias(bias, x_scale, weight_params, name) -> QuantizedBias`` (int32 bias
      and the overflow guard)
    - ``config_hook(backend, config) -> config``: backend-specific adaptation, run by
      ``validate_config`` after the generic checks (warn and adapt, or raise when
      ``config.strict``).
    - ``runner(model, feeds) -> outputs``: executes a model quantized for this backend.
    - ``lowering(model) -> model``: optional standard-ONNX lowering for comparison.
    - ``verifier(model)``: the final check of a quantized model (raise on failure).
    - ``float_prep(model, reader, config, calibrate) -> model``: static mode, before
      calibration: an fp32 transform of the prepared model (e.g. cross-layer
      equalization, weight rounding, bias correction), told by the config's
      ``PREP_SWITCHES`` (None: the backend's default); ``reader`` (may be None) is
      rewound before calibration; ``calibrate`` (may be None) is the calibration the
      quantizer will run (method and options), for a transform that needs its ranges
      (a hook that takes three arguments is called without it).
    - ``pre_passes`` run on the prepared float model, ``range_passes`` on the calibrated
      ranges (static mode), ``post_passes(model, config)`` on the rewritten model.
    """

    name: str
    rules: Mapping[str, OpRule]
    description: str = ""
    activation_types: frozenset[QuantType] = ALL_TYPES
    weight_types: frozenset[QuantType] = ALL_TYPES
    forms: frozenset[OutputForm] = frozenset(OutputForm)
    per_channel: bool = True
    dynamic: bool = True
    default_symmetric_activations: bool = False
    #: ConvInteger may take one weight zero point per output channel (onnxruntime: no;
    #: the rule then uses one uniform zero point, or per-tensor weights for that conv).
    conv_integer_channel_zero_points: bool = True
    #: Run onnx.checker.check_model(full_check=True) on every output model.
    check_standard_onnx: bool = True
    #: ``extra_options`` keys this backend reads itself (the core does not warn about them).
    extra_option_keys: frozenset[str] = frozenset()
    pre_passes: Sequence[Pass] = ()
    post_passes: Sequence[PostPass] = ()
    #: Static mode: ``(prepared model, ranges) -> ranges`` before the walk (e.g. narrowing
    #: a Relu's input range to its consumer's); rules' ``adjust_ranges`` run after them.
    range_passes: Sequence[RangePass] = ()
    activation_params: Callable[..., _params.QuantParams] = _params.activation_params
    weight_params: Callable[..., _params.QuantParams] = _params.weight_params
    quantize_weight: Callable[[np.ndarray, _params.QuantParams], np.ndarray] = (
        _params.quantize_weight
    )
    quantize_bias: Callable[..., _params.QuantizedBias] = _params.quantize_bias
    config_hook: Callable[[Backend, QuantConfig], QuantConfig] | None = None
    float_prep: FloatPrep | None = None
    runner: Runner | None = None
    lowering: Pass | None = None
    verifier: Callable[[onnx.ModelProto], None] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def validate_config(self, config: QuantConfig) -> QuantConfig:
        """A copy of ``config`` this backend can honour (warn and adapt, or raise if strict)."""
        cfg = dataclasses.replace(config)
        if cfg.backend != self.name:
            cfg = dataclasses.replace(cfg, backend=self.name)
        if cfg.form not in self.forms:
            names = ", ".join(sorted(f.value for f in self.forms))
            raise QuantizationError(
                f"backend '{self.name}' does not support the {cfg.form.value} form "
                f"(supported: {names})"
            )
        if not cfg.static:
            if not self.dynamic:
                raise QuantizationError(f"backend '{self.name}' does not support dynamic mode")
            if cfg.form == OutputForm.QDQ:
                cfg = adapt(
                    cfg,
                    "dynamic quantization computes activation parameters at run time with "
                    "DynamicQuantizeLinear, which the qdq form cannot express; using "
                    "form=integer instead of qdq",
                    form=OutputForm.INTEGER,
                )
            if cfg.activation_type != QuantType.QUInt8:
                # DynamicQuantizeLinear always produces uint8: the option has no effect.
                cfg = dataclasses.replace(cfg, activation_type=QuantType.QUInt8)
        if cfg.activation_type not in self.activation_types:
            cfg = adapt(
                cfg,
                f"backend '{self.name}' does not support {cfg.activation_type} activations; "
                f"using {_first(self.activation_types)}",
                activation_type=_first(self.activation_types),
            )
        if cfg.weight_type not in self.weight_types:
            cfg = adapt(
                cfg,
                f"backend '{self.name}' does not support {cfg.weight_type} weights; "
                f"using {_first(self.weight_types)}",
                weight_type=_first(self.weight_types),
            )
        if cfg.per_channel and not self.per_channel:
            cfg = adapt(
                cfg,
                f"backend '{self.name}' supports per-tensor weights only; ignoring per_channel",
                per_channel=False,
            )
        if self.config_hook is not None:
            cfg = self.config_hook(self, cfg)
        return cfg

    def prepare_float(
        self,
        model: onnx.ModelProto,
        reader: Any,
        config: QuantConfig,
        calibrate: Calibrate | None = None,
    ) -> onnx.ModelProto:
        """``float_prep`` of ``model`` (static mode), or ``model`` when there is none."""
        if self.float_prep is None or not config.static:
            asked = [n for n in PREP_SWITCHES if getattr(config, n)]
            if asked:
                why = "dynamic mode" if not config.static else f"backend '{self.name}'"
                warn(f"{' and '.join(asked).replace('_', ' ')}: not available in {why}; ignored")
            return model
        if _positional_arity(self.float_prep) < 4:  # a hook written for three arguments
            return self.float_prep(model, reader, config)
        return self.float_prep(model, reader, config, calibrate)

    def run(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Execute ``model`` as this backend would."""
        if self.runner is None:
            raise SdkError(f"backend '{self.name}' cannot run models")
        return self.runner(model, feeds)

    def lower(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The standard-ONNX equivalent of a model quantized for this backend."""
        if self.lowering is None:
            return model
        return self.lowering(model)

    def verify(self, model: onnx.ModelProto) -> None:
        """Raise QuantizationError if ``model`` is not a valid output for this backend."""
        if self.check_standard_onnx:
            try:
                onnx.checker.check_model(model, full_check=True)
            except Exception as exc:
                raise QuantizationError(
                    f"backend '{self.name}': the quantized model fails onnx.checker: "
                    f"{_first_line(exc)}"
                ) from None
        if self.verifier is not None:
            try:
                self.verifier(model)
            except SdkError:
                raise
            except Exception as exc:
                raise QuantizationError(
                    f"backend '{self.name}': the quantized model does not load: {_first_line(exc)}"
                ) from None


def adapt(config: QuantConfig, message: str, **changes) -> QuantConfig:
    """Apply ``changes`` with a warning, or raise QuantizationError when config.strict."""
    if config.strict:
        raise QuantizationError(message.split(";")[0] + " (strict mode)")
    warn(message)
    return dataclasses.replace(config, **changes)


def _first(types: frozenset) -> QuantType:
    order = [QuantType.QInt8, QuantType.QUInt8, QuantType.QInt16, QuantType.QUInt16]
    return next(t for t in order if t in types)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _positional_arity(func: Callable) -> int:
    """How many positional arguments ``func`` accepts (a large number for ``*args``)."""
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume the current protocol
        return 1 << 16
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 1 << 16
    return sum(p.kind in kinds for p in params)
