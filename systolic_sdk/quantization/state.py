"""Per-edge quantized state of the rewrite walk, and the cache of inserted Q/DQ nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

from systolic_sdk.quantization.params import QuantParams
from systolic_sdk.quantization.types import QuantType


@dataclass(frozen=True)
class EdgeState:
    """How a float tensor of the original graph exists in quantized form.

    ``params`` is None when scale and zero point are computed at run time (dynamic
    mode: ``scale_name``/``zp_name`` are then outputs of a DynamicQuantizeLinear).
    ``float_available`` says whether the original float tensor is still produced in the
    rewritten graph (True for a float tensor that was quantized by an inserted
    QuantizeLinear; False for the output of a rewritten op, whose float consumers need a
    DequantizeLinear).
    """

    float_name: str
    q_name: str
    scale_name: str
    zp_name: str
    qtype: QuantType
    params: QuantParams | None
    float_available: bool

    @property
    def static(self) -> bool:
        return self.params is not None


@dataclass
class EdgeStates:
    """The walk's memory: edge states by float name, and the Q/DQ insertion caches."""

    edges: dict[str, EdgeState] = field(default_factory=dict)
    #: quantized tensor name -> output name of its one DequantizeLinear
    dequantized: dict[str, str] = field(default_factory=dict)
    #: (constant name, params key) -> quantized initializer state (shared weights)
    constants: dict[tuple, EdgeState] = field(default_factory=dict)

    def get(self, float_name: str) -> EdgeState | None:
        return self.edges.get(float_name)

    def set(self, state: EdgeState) -> None:
        if state.float_name in self.edges:
            raise RuntimeError(f"tensor '{state.float_name}' is already quantized")
        self.edges[state.float_name] = state

    def replace(self, state: EdgeState) -> None:
        """Give an already quantized tensor a new quantized form (after requantizing it)."""
        if state.float_name not in self.edges:
            raise RuntimeError(f"tensor '{state.float_name}' is not quantized")
        self.edges[state.float_name] = state
