"""QuantConfig: everything one quantization run needs, independent of which API built it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from systolic_sdk.quantization.types import OutputForm, QuantType


@dataclass(frozen=True)
class TensorOverride:
    """A user's fixed quantization parameters for one tensor (or one per channel)."""

    scale: tuple[float, ...]  # one value per tensor, or one per channel
    zero_point: tuple[int, ...] | None = None  # None: chosen by the quantizer
    quant_type: QuantType | None = None  # None: the config's type for that tensor
    axis: int | None = None  # channel axis when len(scale) > 1
    # Optional range instead of a scale (rmin, rmax); exactly one of scale/range is given.
    rmin: float | None = None
    rmax: float | None = None
    # Without a scale: how parameters are computed from the range (None: the run's default)
    symmetric: bool | None = None
    reduce_range: bool | None = None


@dataclass
class QuantConfig:
    """The options of one quantization run.

    Built by the public APIs (``quantize``, ``quantize_static``, ``quantize_dynamic``,
    the CLI) and consumed by ``systolic_sdk.quantization.quantize_model``.
    """

    backend: str = "cpu"
    form: OutputForm = OutputForm.QDQ
    static: bool = True
    activation_type: QuantType = QuantType.QInt8
    weight_type: QuantType = QuantType.QInt8
    per_channel: bool = False
    reduce_range: bool = False
    symmetric_activations: bool | None = None  # None: backend/type default
    symmetric_weights: bool | None = None  # None: True for signed weight types
    quantize_bias: bool = True
    op_types_to_quantize: frozenset[str] | None = None  # None: every op the backend supports
    nodes_to_quantize: frozenset[str] | None = None  # None: all nodes
    nodes_to_exclude: frozenset[str] = frozenset()
    tensor_overrides: dict[str, TensorOverride] = field(default_factory=dict)
    strict: bool = False  # refuse (instead of warn and adapt) requests the backend cannot honour
    # fp32 preparation before calibration (the backend's ``float_prep``); None: its default
    equalization: bool | None = None  # cross-layer equalization
    weight_rounding: bool | None = None  # weights rounded by GPTQ on the calibration data
    bias_correction: bool | None = None  # bias correction (static mode, needs calibration data)
    extra_options: dict[str, Any] = field(default_factory=dict)
