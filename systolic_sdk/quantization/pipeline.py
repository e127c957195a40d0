"""quantize_model and tensors_to_calibrate: the core's entry points."""

from __future__ import annotations

from collections.abc import Mapping

import onnx

import systolic_sdk
from systolic_sdk.errors import QuantizationError
from systolic_sdk.quantization.config import QuantConfig
from systolic_sdk.quantization.context import RewriteContext
from systolic_sdk.quantization.prepare import prepare_model
from systolic_sdk.quantization.rewriter import eligible_rule, walk
from systolic_sdk.quantization.warn import warn

#: extra_options keys (onnxruntime's names) the core honours.
SUPPORTED_OPTIONS = frozenset(
    {
        "ActivationSymmetric",
        "WeightSymmetric",
        "ForceQuantizeNoInputCheck",
        "MatMulConstBOnly",
        "MinimumRealRange",
        "QDQKeepRemovableActivations",
        "OpTypesToExcludeOutputQuantization",
    }
)
#: onnxruntime keys consumed before the core (by calibration or the public APIs, which
#: map them to QuantConfig fields); accepted silently here.
HANDLED_ELSEWHERE = frozenset(
    {
        "CalibTensorRangeSymmetric",
        "CalibMovingAverage",
        "CalibMovingAverageConstant",
        "CalibMaxIntermediateOutputs",
        "CalibStridedMinMax",
        "CalibPercentile",
        "CalibNumBins",
        "CalibNumQuantizedBins",
        "QuantizeBias",
        "TensorQuantOverrides",
    }
)

METADATA_BACKEND = "systolic_sdk.backend"
METADATA_VERSION = "systolic_sdk.version"


def _backend(config: QuantConfig):
    from systolic_sdk.backends import get_backend

    return get_backend(config.backend)


def _check_options(config: QuantConfig, backend_keys: frozenset[str]) -> None:
    for key in config.extra_options:
        if key not in SUPPORTED_OPTIONS | HANDLED_ELSEWHERE | backend_keys:
            warn(f"extra option '{key}' is not supported by the quantizer; ignored")


def _check_selection(model: onnx.ModelProto, config: QuantConfig, backend) -> None:
    """Warn about node names and op types in the options that select nothing."""
    names = {n.name for n in model.graph.node}
    for option in ("nodes_to_quantize", "nodes_to_exclude"):
        for name in sorted(getattr(config, option) or ()):
            if name not in names:
                warn(f"{option}: the model has no node named '{name}'")
    for op in sorted(config.op_types_to_quantize or ()):
        if op not in backend.rules:
            warn(
                f"op_types_to_quantize: backend '{backend.name}' has no rule for '{op}'; "
                "such nodes stay float"
            )


def quantize_model(
    model: onnx.ModelProto,
    config: QuantConfig,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    *,
    prepared: bool = False,
) -> onnx.ModelProto:
    """Quantize ``model`` (not modified) for ``config.backend`` and return the new model.

    Static mode needs a range (or a tensor override) for every activation it quantizes
    (``tensors_to_calibrate`` lists them); dynamic mode computes activation parameters
    at run time. The result passes the backend's final check, else QuantizationError.
    ``prepared``: ``model`` already comes from ``prepare_model(model, config)``.
    """
    backend = _backend(config)
    config = backend.validate_config(config)
    _check_options(config, backend.extra_option_keys)
    if not prepared:
        model = prepare_model(model, config)
    prepared_model = model
    _check_selection(prepared_model, config, backend)
    for p in backend.pre_passes:
        prepared_model = p(prepared_model)
    ranges = dict(ranges or {}) if config.static else None
    for rp in backend.range_passes if config.static else ():
        ranges = dict(rp(prepared_model, dict(ranges)))
    ctx = RewriteContext(prepared_model, config, backend, ranges)
    out = walk(ctx)
    for p in backend.post_passes:
        out = p(out, config)
    props = {
        METADATA_BACKEND: backend.name,
        METADATA_VERSION: systolic_sdk.__version__,
        **dict(backend.metadata),
    }
    keep = [m for m in out.metadata_props if m.key not in props]
    del out.metadata_props[:]
    out.metadata_props.extend(keep)
    onnx.helper.set_model_props(out, {**{m.key: m.value for m in keep}, **props})
    backend.verify(out)
    return out


def tensors_to_calibrate(
    model: onnx.ModelProto, config: QuantConfig, *, prepared: bool = False
) -> list[str]:
    """The float activations a static quantization of ``model`` may need ranges for.

    These are the inputs and outputs of every node the walk may quantize, in graph
    order. Tensor names are those of ``prepare_model(model, config)`` (the same as the
    input model's unless an opset upgrade had to add nodes), so calibrate the prepared
    model when the opset is below 10.
    """
    backend = _backend(config)
    config = backend.validate_config(config)
    if not config.static:
        return []
    if not prepared:
        model = prepare_model(model, config)
    prepared_model = model
    for p in backend.pre_passes:
        prepared_model = p(prepared_model)
    ctx = RewriteContext(prepared_model, config, backend, None)
    names: dict[str, None] = {}
    for node in prepared_model.graph.node:
        rule = eligible_rule(ctx, node)
        if rule is None:
            continue
        for name in rule.activation_tensors(node, ctx):
            names[name] = None
    return list(names)


__all__ = ["QuantizationError", "prepare_model", "quantize_model", "tensors_to_calibrate"]
