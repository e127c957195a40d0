"""The "systolic" backend: the Systolic int8 accelerator (Gemmini-class), NCHW graphs.

int8 only, zero point 0 everywhere, per-tensor scales chosen as the existing Gemmini
flow does (spec section 7), QOperator form, static mode. Output ops: QLinearConv
(``relu=1`` when a ReLU was fused), QLinearMatMul, com.microsoft QLinearAdd (equal
shapes, the accelerator's rounding), com.systolic QLinearRelu (when it could not be
fused), int8 MaxPool/Reshape/Flatten/Transpose on the host, everything else float.
Models run in ``runtime_emulator`` with target "systolic"; ``lowering`` gives the
standard-ONNX equivalent for stock onnxruntime.

``QuantConfig.extra_options`` keys of this backend:

- ``"SystolicLayout"``: ``"nchw"`` (default) or ``"nhwc"``: QLinearConv becomes
  QLinearConv_nhwc (HWIO weights, an eligible MaxPool fused), Transpose nodes only at
  NCHW boundaries (spec section 6; :func:`layout.to_nhwc`).
- ``"SystolicInt8InLoop"``: ``True`` (default) or ``False``: the fp32 preparation's GPTQ
  weight rounding and bias correction are measured layer by layer in the int8 model
  (:func:`transforms.sequential.round_sequentially`), or on the fp32 model (faster,
  less accurate: EfficientNet-Lite0 SQNR 17.0 dB against 19.7 dB).
- ``"SystolicOpsDomain"``: ``"com.systolic"`` (default: QLinearRelu and QLinearConv_nhwc
  in the SDK's domain, with schemas so onnx.checker accepts the model) or
  ``"gemmini-ort"`` (the default ONNX domain, as the Gemmini fork of onnxruntime
  registers them; onnx.checker is then skipped, as it rejects such ops).

The post pass :func:`apply_options` reads them from the run's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import onnx

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.backends.base import PREP_SWITCHES, Backend, Calibrate, adapt
from systolic_sdk.backends.systolic import params
from systolic_sdk.backends.systolic.layout import (
    GEMMINI_ORT_DOMAIN,
    SYSTOLIC_OPS,
    to_nhwc,
)
from systolic_sdk.backends.systolic.lowering import lower_systolic
from systolic_sdk.backends.systolic.passes import fuse_relu, narrow_ranges, sync_domains
from systolic_sdk.backends.systolic.rules import systolic_rules
from systolic_sdk.backends.systolic.schemas import register_schemas
from systolic_sdk.errors import QuantizationError
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.types import OutputForm, QuantType
from systolic_sdk.quantization.warn import warn

NAME = "systolic"
#: Op types whose zero-point inputs (by index) must be 0 in a Systolic graph.
ZERO_POINT_INPUTS = {
    "QuantizeLinear": (2,),
    "DequantizeLinear": (2,),
    "QLinearConv": (2, 5, 7),
    "QLinearConv_nhwc": (2, 5, 7),
    "QLinearMatMul": (2, 5, 7),
    "QLinearAdd": (2, 5, 7),
    "QLinearAveragePool": (2, 4),
    "QLinearGlobalAveragePool": (2, 4),
}


LAYOUTS = ("nchw", "nhwc")
OPS_DOMAINS = {"com.systolic": SYSTOLIC_DOMAIN, "gemmini-ort": GEMMINI_ORT_DOMAIN}


def systolic_config_hook(backend: Backend, config: QuantConfig) -> QuantConfig:
    """Refuse what the accelerator cannot do; adapt the rest (or refuse under strict)."""
    cfg = config
    layout = str(cfg.extra_options.get("SystolicLayout", "nchw")).lower()
    if layout not in LAYOUTS:
        raise QuantizationError(
            f"extra option SystolicLayout: expected one of {', '.join(LAYOUTS)}, got '{layout}'"
        )
    domain = str(cfg.extra_options.get("SystolicOpsDomain", "com.systolic")).lower()
    if domain not in OPS_DOMAINS:
        raise QuantizationError(
            f"extra option SystolicOpsDomain: expected one of {', '.join(OPS_DOMAINS)}, "
            f"got '{domain}'"
        )
    in_loop = cfg.extra_options.get("SystolicInt8InLoop", True)
    if not isinstance(in_loop, (bool, np.bool_)):
        raise QuantizationError(
            f"extra option SystolicInt8InLoop: expected True or False, got {in_loop!r}"
        )
    for what, qtype in (("activations", cfg.activation_type), ("weights", cfg.weight_type)):
        if qtype != QuantType.QInt8:
            raise QuantizationError(
                f"backend '{NAME}' runs int8 only (symmetric, zero point 0): {qtype} "
                f"{what} are not supported; use QInt8"
            )
    for name, ov in sorted(cfg.tensor_overrides.items()):
        if ov.quant_type not in (None, QuantType.QInt8):
            raise QuantizationError(
                f"tensor override '{name}': backend '{NAME}' runs int8 only, not {ov.quant_type}"
            )
        if ov.zero_point is not None and any(int(z) != 0 for z in ov.zero_point):
            raise QuantizationError(
                f"tensor override '{name}': backend '{NAME}' needs zero point 0, "
                f"got {list(ov.zero_point)}"
            )
        if ov.symmetric is False or ov.reduce_range:
            key = "symmetric=false" if ov.symmetric is False else "reduce_range"
            raise QuantizationError(
                f"tensor override '{name}': backend '{NAME}' quantizes symmetrically over the "
                f"full int8 range; '{key}' is not supported"
            )
        if len(ov.scale) > 1 or ov.axis is not None:
            raise QuantizationError(
                f"tensor override '{name}': backend '{NAME}' supports per-tensor scales only, "
                f"got {len(ov.scale)} scales"
            )
    if cfg.form == OutputForm.QDQ:
        cfg = adapt(
            cfg,
            f"backend '{NAME}' consumes QOperator graphs (QLinearConv, QLinearMatMul, "
            "QLinearAdd); using form=qoperator instead of qdq",
            form=OutputForm.QOPERATOR,
        )
    if cfg.symmetric_activations is False or cfg.symmetric_weights is False:
        cfg = adapt(
            cfg,
            f"backend '{NAME}' quantizes symmetrically (zero point 0); "
            "ignoring the asymmetric request",
            symmetric_activations=True,
            symmetric_weights=True,
        )
    if cfg.reduce_range:
        cfg = adapt(
            cfg,
            f"backend '{NAME}' uses the full int8 range; ignoring reduce_range",
            reduce_range=False,
        )
    if not cfg.quantize_bias:
        cfg = adapt(
            cfg,
            f"backend '{NAME}' adds an int32 bias in the accumulator; ignoring quantize_bias=False",
            quantize_bias=True,
        )
    return dataclasses.replace(cfg, symmetric_activations=True, symmetric_weights=True)


def apply_options(model: onnx.ModelProto, config: QuantConfig) -> onnx.ModelProto:
    """Post pass: the layout and op flavour asked for in ``config.extra_options``."""
    options = config.extra_options
    layout = str(options.get("SystolicLayout") or "nchw").lower()
    domain = OPS_DOMAINS[str(options.get("SystolicOpsDomain") or "com.systolic").lower()]
    if layout == "nhwc":
        return to_nhwc(model, domain)
    if domain == SYSTOLIC_DOMAIN:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        if n.domain == SYSTOLIC_DOMAIN and n.op_type in SYSTOLIC_OPS:
            n.domain = domain
    return sync_domains(out)


def run_systolic(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` in the bit-exact emulator (target "systolic"); outputs in graph order."""
    import runtime_emulator

    outputs = runtime_emulator.run(model, feeds, target=NAME)
    return [outputs[o.name] for o in model.graph.output]


def prepare_float(
    model: onnx.ModelProto, reader, config: QuantConfig, calibrate: Calibrate | None = None
) -> onnx.ModelProto:
    """The fp32 preparation for per-tensor weights (:func:`per_tensor_recipe`: by default
    GPTQ weight rounding and bias correction, measured on ``reader`` in the int8 model
    with the activation scales this ``config`` and ``calibrate`` (the quantizer's
    calibration; None: MinMax) will give; cross-layer equalization on request). A step
    the config switches explicitly is passed on; the data-driven steps are skipped
    without data (with a warning if one was asked for)."""
    from systolic_sdk.transforms.recipe import per_tensor_recipe

    switches = {n: getattr(config, n) for n in PREP_SWITCHES if getattr(config, n) is not None}
    if reader is None:
        asked = [n for n in ("weight_rounding", "bias_correction") if switches.get(n)]
        if asked:
            what = " and ".join(n.replace("_", " ") for n in asked)
            warn(f"{what} needs calibration data; skipped")
    from systolic_sdk.backends.systolic.scales import activation_scales

    def scales(prepared: onnx.ModelProto, data) -> dict[str, float]:
        return activation_scales(prepared, data, config, calibrate=calibrate)

    in_loop = bool(config.extra_options.get("SystolicInt8InLoop", True))
    return per_tensor_recipe(
        model, reader, int8_in_loop=in_loop, activation_scales=scales, **switches
    )


def check_systolic_graph(model: onnx.ModelProto) -> None:
    """Raise QuantizationError unless every zero point is 0 and every scale per tensor,
    and the graph passes onnx.checker once ``relu`` attributes are set aside (QLinearConv's
    standard schema does not know ``relu``)."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for i in ZERO_POINT_INPUTS.get(node.op_type, ()):
            name = node.input[i] if len(node.input) > i else ""
            if not name:
                continue
            if name not in inits:
                raise QuantizationError(f"node '{node.name}': zero point '{name}' is not constant")
            zp = onnx.numpy_helper.to_array(inits[name])
            if zp.size != 1 or np.any(zp != 0) or zp.dtype not in (np.int8, np.int32):
                raise QuantizationError(
                    f"node '{node.name}': zero point '{name}' must be one int8 0, got "
                    f"{zp.dtype} {zp.reshape(-1)[:4].tolist()}"
                )
            scale_name = node.input[i - 1]
            if scale_name in inits and len(inits[scale_name].dims) > 0:
                if int(np.prod(inits[scale_name].dims)) != 1:
                    raise QuantizationError(
                        f"node '{node.name}': scale '{scale_name}' is not per tensor"
                    )
    if any(n.domain == GEMMINI_ORT_DOMAIN and n.op_type in SYSTOLIC_OPS for n in model.graph.node):
        return  # the Gemmini fork's default-domain ops: stock onnx.checker rejects them
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for node in stripped.graph.node:
        kept = [a for a in node.attribute if a.name != "relu"]
        del node.attribute[:]
        node.attribute.extend(kept)
    register_schemas()
    try:
        onnx.checker.check_model(stripped, full_check=True)
    except Exception as exc:  # noqa: BLE001  (the checker raises several types)
        text = str(exc).strip().splitlines()
        raise QuantizationError(
            f"backend '{NAME}': the quantized model fails onnx.checker: "
            f"{text[0] if text else type(exc).__name__}"
        ) from None


register_schemas()

SYSTOLIC_BACKEND = Backend(
    name=NAME,
    description="the Systolic int8 accelerator (Gemmini-class), NCHW QOperator graphs",
    rules=systolic_rules(),
    extra_option_keys=frozenset({"SystolicLayout", "SystolicOpsDomain", "SystolicInt8InLoop"}),
    forms=frozenset({OutputForm.QOPERATOR, OutputForm.QDQ}),
    per_channel=False,
    dynamic=False,
    default_symmetric_activations=True,
    check_standard_onnx=False,
    range_passes=(narrow_ranges,),
    post_passes=(fuse_relu, apply_options),
    activation_params=params.activation_params,
    weight_params=params.weight_params,
    quantize_weight=params.quantize_weight,
    quantize_bias=params.quantize_bias,
    config_hook=systolic_config_hook,
    float_prep=prepare_float,
    runner=run_systolic,
    lowering=lower_systolic,
    verifier=check_systolic_graph,
)


def _register() -> None:
    from systolic_sdk.backends import register_backend

    register_backend(SYSTOLIC_BACKEND, replace=True)


_register()

__all__ = [
    "SYSTOLIC_BACKEND",
    "apply_options",
    "to_nhwc",
    "check_systolic_graph",
    "lower_systolic",
    "run_systolic",
    "systolic_config_hook",
]
