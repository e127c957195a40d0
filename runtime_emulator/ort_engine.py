"""The fast engine: QLinearConv and QLinearMatMul on onnxruntime's kernels, bit for bit.

onnxruntime's CPU QLinearConv and QLinearMatMul compute the spec's steps 2.1-2.5 exactly
(measured by ``tests/emulator/test_differential_ort.py``; ``runtime_emulator/README.md``):
the exact integer sum wrapped to int32 with the bias, ``M = f32(f32(s_x * s_w) / s_y)``
per output channel, ``f32(acc) * M`` in float32, round half to even, add the zero point,
saturate. Their fastest kernels take uint8 activations, so an int8 layer runs shifted:

- ``x`` int8 with zero point ``z`` is the uint8 ``x ^ 0x80`` (``x + 128``) with zero point
  ``z + 128``: every ``x - z`` is unchanged, so is every accumulator;
- an int8 output with zero point ``z`` is computed as uint8 with ``z + 128``:
  ``sat_u8(r + z + 128) - 128 == sat_i8(r + z)`` for every rounded ``r``, and flipped back
  (``^ 0x80``); the fused ReLU is ``Max(y, y_zp)`` in the same domain.

Accumulators wrap modulo 2**32 in the spec; onnxruntime sums raw byte products in int32
(with saturating adds on VNNI) and subtracts the zero-point terms afterwards, which gives
the wrapped sum as long as the raw sums stay below 2**31: layers with K above
:data:`MAX_K` (33025) stay on the NumPy datapath (the conformance suite's int32-wrap case,
K = 2**17 + 8, is one). What else could break the equality is known: on CPUs without
AVX-512 VNNI / AVX-VNNI, onnxruntime's uint8 x int8 kernels add pairs of byte products in
saturating int16 (``255 * 127 * 2 > 32767``), and another build could requantize
differently. So before first use :func:`available` runs a self-check of adversarial
layers (every product at the int16-saturating extreme, K up to :data:`MAX_K`, ties at .5,
output saturation, zero points, per-channel scales, groups, depthwise, 1x1, strides,
dilations, one output pixel or row, NHWC, batched matmuls) through the engine and through
the NumPy datapath's int64 reference, and turns the engine off if a single bit differs.
The rules themselves live in :mod:`runtime_emulator.datapath`.

Where it applies: int8 or uint8 ``x`` (per-tensor zero point), int8 weights with zero
point 0 or uint8 weights (per-tensor zero point), per-tensor or per-channel weight
scales, finite positive scales, int8 or uint8 output, every operand but ``x`` a constant,
1-D and 2-D convs, matmuls with a 2-D constant ``b``. The engine is chosen by
:func:`set_engine`, :func:`using` or the ``SYSTOLIC_EMULATOR_ENGINE`` environment
variable: ``auto`` (default: this engine where it applies and passes its self-check),
``numpy`` (the NumPy datapath everywhere: the validation commands use it, so that they
never compare onnxruntime with itself), ``onnxruntime`` (as ``auto``, but a failed
self-check is an error).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from runtime_emulator import datapath as dp
from runtime_emulator import threads
from runtime_emulator.errors import EmulatorError

ENGINES = ("auto", "onnxruntime", "numpy")
ENV_VAR = "SYSTOLIC_EMULATOR_ENGINE"
#: Longest reduction the engine takes: onnxruntime sums raw byte products (up to
#: 255 * 255 each) in int32, with saturating adds on VNNI; below 2**31 nothing saturates
#: and the zero-point corrections give the exact sum modulo 2**32, the accumulator's wrap.
MAX_K = (2**31 - 1) // (255 * 255)

_state: dict[str, Any] = {"checked": None}
_local = threading.local()
_lock = threading.Lock()


class EngineError(EmulatorError):
    """The onnxruntime engine was required but does not give the datapath's bits here."""


def engine() -> str:
    """The engine in force: :func:`using`'s, else :func:`set_engine`'s, else the environment's."""
    name = getattr(_local, "engine", None) or _state.get("engine")
    name = name or os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in ENGINES:
        raise EngineError(f"{ENV_VAR}={name!r}: expected one of {', '.join(ENGINES)}")
    return name


def set_engine(name: str | None) -> None:
    """Choose ``auto``, ``onnxruntime`` or ``numpy`` for the process; ``None`` goes back to
    the environment variable."""
    if name is not None and name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    _state["engine"] = name


@contextmanager
def using(name: str) -> Iterator[None]:
    """Run the enclosed code (in this thread) with engine ``name``."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}")
    previous = getattr(_local, "engine", None)
    _local.engine = name
    try:
        yield
    finally:
        _local.engine = previous


def enabled() -> bool:
    """Whether layers run on onnxruntime (engine not ``numpy`` and the self-check passed)."""
    name = engine()
    if name == "numpy":
        return False
    ok = available()
    if not ok and name == "onnxruntime":
        raise EngineError(
            "onnxruntime's integer kernels failed the engine's self-check on this machine; "
            f"use {ENV_VAR}=numpy (or auto)"
        )
    return ok


@dataclass(frozen=True)
class LayerSpec:
    """One QLinearConv or QLinearMatMul layer as the engine needs it (every operand but
    ``x`` is a constant). The operands keep QLinearConv's names; for QLinearMatMul ``x``
    is ``a`` and ``w`` is ``b``."""

    x_dtype: np.dtype
    x_scale: np.ndarray  # float32, one value
    x_zero_point: int
    w: np.ndarray  # conv: (M, C/group, *kernel); matmul: (K, N); int8 or uint8
    w_scale: np.ndarray  # float32, one value or one per output channel / column
    w_zero_point: int
    y_scale: np.ndarray  # float32, one value
    y_dtype: np.dtype
    y_zero_point: int
    bias: np.ndarray | None = None  # int32 (M,), conv only
    relu: bool = False  # conv only
    strides: list[int] | None = None
    pads: list[int] | None = None
    dilations: list[int] | None = None
    group: int = 1
    #: "nhwc": ``x`` and ``y`` are N...C (the Transposes run inside the session).
    layout: str = "nchw"
    op: str = "QLinearConv"

    @classmethod
    def from_operands(
        cls,
        x_dtype: np.dtype,
        w: np.ndarray,
        scales: tuple[np.ndarray, np.ndarray, np.ndarray],
        zero_points: tuple[np.ndarray, np.ndarray, np.ndarray],
        y_dtype: np.dtype,
        **fields: Any,
    ) -> LayerSpec:
        """A layer from a kernel's ``(x, w, y)`` scales and one-value zero points (``w``'s
        scale may be one per channel); ``fields``: the rest (bias, relu, geometry, op)."""
        (x_scale, w_scale, y_scale), (x_zp, w_zp, y_zp) = scales, zero_points
        return cls(
            x_dtype=np.dtype(x_dtype),
            x_scale=np.asarray(x_scale, np.float32),
            x_zero_point=int(np.asarray(x_zp).reshape(())),
            w=w,
            w_scale=np.asarray(w_scale, np.float32),
            w_zero_point=int(np.asarray(w_zp).reshape(())),
            y_scale=np.asarray(y_scale, np.float32),
            y_dtype=np.dtype(y_dtype),
            y_zero_point=int(np.asarray(y_zp).reshape(())),
            **fields,
        )


def _byte_type(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in (np.dtype(np.int8), np.dtype(np.uint8))


def applies(spec: LayerSpec) -> bool:
    """Whether the engine handles this layer (see the module docstring)."""
    w = spec.w
    if not (_byte_type(spec.x_dtype) and _byte_type(w.dtype) and _byte_type(spec.y_dtype)):
        return False
    if w.dtype == np.int8 and spec.w_zero_point != 0:
        return False
    if spec.op == "QLinearMatMul":
        shape_ok = w.ndim == 2 and spec.bias is None and not spec.relu
        channels = w.shape[-1]
    else:  # 1-D and 2-D convs: what the self-check covers
        shape_ok = spec.op == "QLinearConv" and w.ndim in (3, 4)
        channels = w.shape[0]
    if not shape_ok or w.size == 0 or spec.w_scale.size not in (1, channels):
        return False
    k = w.shape[0] if spec.op == "QLinearMatMul" else int(np.prod(w.shape[1:]))
    if k > MAX_K:
        return False  # raw byte-product sums could pass 2**31 (saturating VNNI adds)
    scales = (spec.x_scale, spec.w_scale, spec.y_scale)
    if not all(np.all(np.isfinite(s)) and np.all(s > 0) for s in scales):
        return False
    m = dp.requant_multiplier(spec.x_scale, spec.w_scale, spec.y_scale)
    return bool(np.all(np.isfinite(m)))


def _as_u8_zero_point(dtype: np.dtype, zero_point: int) -> int:
    return zero_point + 128 if np.dtype(dtype) == np.int8 else zero_point


def _layer_model(spec: LayerSpec) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    u8 = np.uint8
    y_zp = _as_u8_zero_point(spec.y_dtype, spec.y_zero_point)
    w_scale_shape = () if spec.w_scale.size == 1 else -1  # per tensor, or per channel
    inits = [
        numpy_helper.from_array(spec.x_scale.astype(np.float32).reshape(()), "x_scale"),
        numpy_helper.from_array(
            np.array(_as_u8_zero_point(spec.x_dtype, spec.x_zero_point), u8), "x_zp"
        ),  # fmt: skip
        numpy_helper.from_array(np.ascontiguousarray(spec.w), "w"),
        numpy_helper.from_array(spec.w_scale.astype(np.float32).reshape(w_scale_shape), "w_scale"),
        numpy_helper.from_array(np.array(spec.w_zero_point, spec.w.dtype), "w_zp"),
        numpy_helper.from_array(spec.y_scale.astype(np.float32).reshape(()), "y_scale"),
        numpy_helper.from_array(np.array(y_zp, u8), "y_zp"),
    ]
    ins = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]
    if spec.bias is not None:
        inits.append(numpy_helper.from_array(spec.bias.astype(np.int32).reshape(-1), "b"))
        ins.append("b")
    attrs = {}
    if spec.op == "QLinearConv":
        attrs = {
            "strides": spec.strides,
            "pads": spec.pads,
            "dilations": spec.dilations,
            "group": spec.group,
        }
    nodes = [helper.make_node(spec.op, ins, ["op_y"], **attrs)]
    y = "op_y"
    if spec.relu:
        nodes.append(helper.make_node("Max", [y, "y_zp"], ["relu_y"]))
        y = "relu_y"
    if spec.layout == "nhwc":
        rank = spec.w.ndim
        nodes.insert(0, helper.make_node("Transpose", ["x_nhwc"], ["x"],
                                         perm=[0, rank - 1, *range(1, rank - 1)]))  # fmt: skip
        nodes.append(helper.make_node("Transpose", [y], ["y"], perm=[0, *range(2, rank), 1]))
    else:
        nodes[-1].output[0] = "y"
    x_name = "x_nhwc" if spec.layout == "nhwc" else "x"
    graph = helper.make_graph(
        nodes,
        "systolic_layer",
        [helper.make_tensor_value_info(x_name, TensorProto.UINT8, None)],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def small_session(model: Any, intra_threads: int, optimization: str = "disable_all") -> Any:
    """An onnxruntime CPU session for one of many small models run side by side (a layer,
    a node): ``intra_threads`` threads that sleep rather than spin when idle, graph
    optimization level ``ORT_<optimization upper-cased>``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, f"ORT_{optimization.upper()}"
    )
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _flip(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """int8 <-> uint8 shifted by 128 (``a ^ 0x80``, reinterpreted)."""
    return np.bitwise_xor(a.view(np.uint8), np.uint8(0x80)).view(dtype)


class Layer:
    """A compiled layer: ``layer(x)`` is the layer's output for 8-bit ``x``."""

    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        # No graph rewrite may change a step (layout changes, fusions): no optimization.
        self._session = small_session(_layer_model(spec), threads.workers())
        self._input = self._session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        x_u8 = _flip(x, np.dtype(np.uint8)) if x.dtype == np.int8 else x
        y = self._session.run(None, {self._input: x_u8})[0]
        return _flip(y, np.dtype(np.int8)) if self.spec.y_dtype == np.int8 else y


def compile_layer(spec: LayerSpec) -> Layer | None:
    """The compiled layer, or None when the engine is off or does not handle the layer."""
    if not applies(spec) or not enabled():
        return None
    try:
        return Layer(spec)
    except Exception:  # noqa: BLE001 - a layer onnxruntime refuses runs on the datapath
        return None


def node_layer(
    extra: dict[str, Any],
    inputs: Sequence[np.ndarray | None],
    key: tuple[Any, ...],
    make_spec: Callable[[], LayerSpec],
) -> Layer | None:
    """A node's compiled layer, made once per node and kept in its context ``extra``.

    None (the NumPy datapath runs the node) when the engine is ``numpy``, when an input
    other than the first is not a constant (``extra["constant_inputs"]``), or when the
    engine does not take the layer. ``key`` holds what else the layer depends on (the
    first input's dtype, the layout, pads resolved from the input's size); the entry
    keeps the operand arrays alive, so an identity match means the same arrays.
    """
    if engine() == "numpy":
        return None
    const = extra.get("constant_inputs", ())
    operands = tuple(inputs[1:])
    if any(v is not None and i + 1 not in const for i, v in enumerate(operands)):
        return None
    cached = extra.get("compiled_layer")
    if (
        cached is not None
        and cached[0] == key
        and len(cached[1]) == len(operands)
        and all(a is b for a, b in zip(cached[1], operands, strict=True))
    ):
        return cached[2]
    layer = compile_layer(make_spec())
    extra["compiled_layer"] = (key, operands, layer)
    return layer


def run_layer(extra: dict[str, Any], layer: Layer | None, x: np.ndarray) -> np.ndarray | None:
    """``layer(x)``, or None (the NumPy datapath runs the node) when there is no layer or
    onnxruntime refuses the input; a refused node stays on the datapath from then on."""
    if layer is None:
        return None
    try:
        return layer(x)
    except Exception:  # noqa: BLE001 - onnxruntime refused the input: use the datapath
        cached = extra.get("compiled_layer")
        if cached is not None:
            extra["compiled_layer"] = (cached[0], cached[1], None)
        return None


# --- self-check ------------------------------------------------------------------------


def _check_cases(rng: np.random.Generator) -> list[tuple[LayerSpec, np.ndarray]]:
    """Adversarial layers for the self-check (see the module docstring)."""
    cases: list[tuple[LayerSpec, np.ndarray]] = []
    f32 = np.float32

    def add(x, w, *, sx=0.05, x_zp=0, sw=0.02, w_zp=0, sy=0.1, y=np.int8, y_zp=0, bias=None,
            relu=False, strides=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1), group=1,
            layout="nchw"):  # fmt: skip
        spec = LayerSpec(
            x.dtype, np.asarray(sx, f32), x_zp, w, np.asarray(sw, f32), w_zp,
            np.asarray(sy, f32), np.dtype(y), y_zp,
            None if bias is None else np.asarray(bias, np.int32), relu,
            list(strides), list(pads), list(dil), group, layout,
        )  # fmt: skip
        cases.append((spec, np.moveaxis(x, 1, -1).copy() if layout == "nhwc" else x))

    def add_matmul(a, b, *, sa=0.05, a_zp=0, sb=0.02, b_zp=0, sy=0.1, y=np.int8, y_zp=0):
        spec = LayerSpec(
            a.dtype, np.asarray(sa, f32), a_zp, b, np.asarray(sb, f32), b_zp,
            np.asarray(sy, f32), np.dtype(y), y_zp, op="QLinearMatMul",
        )  # fmt: skip
        cases.append((spec, a))

    x8 = rng.integers(-128, 128, (2, 16, 9, 9)).astype(np.int8)
    w8 = rng.integers(-128, 128, (8, 16, 3, 3)).astype(np.int8)
    b = rng.integers(-(2**20), 2**20, 8)
    # Multipliers that make many .5 ties (0.5, 0.25, 1/32), odd scale products, saturation.
    for sx, sw, sy in ((1.0, 1.0, 2.0), (0.5, 0.5, 1.0), (1.0, 1 / 32, 1.0),
                       (0.0123, 0.0071, 0.0391), (0.3, 0.7, 0.01)):  # fmt: skip
        add(x8, w8, sx=sx, sw=sw, sy=sy, bias=b)
    # Every byte product at the int16-saturating extreme (255 * -128 after the shift), long K;
    # the same through a 1x1 conv and with one output pixel (GEMV-like kernels).
    for c, k in ((512, 3), (2048, 1)):
        for xv in (-128, 127):
            add(np.full((1, c, 4, 4), xv, np.int8), np.full((4, c, k, k), -128, np.int8),
                sw=1e-3, sy=1e3, pads=(k // 2,) * 4)  # fmt: skip
    add(np.full((1, 1024, 3, 3), 127, np.int8), np.full((4, 1024, 3, 3), 127, np.int8),
        sw=1e-3, sy=1e3, pads=(0, 0, 0, 0))  # fmt: skip
    add(x8, w8, relu=True, sy=0.001)  # saturation both ways, fused ReLU
    add(x8, w8, x_zp=-3, y_zp=5, relu=True, sw=[0.01 * (i + 1) for i in range(8)])
    ux = rng.integers(0, 256, (2, 16, 9, 9)).astype(np.uint8)
    uw = rng.integers(0, 256, (8, 16, 3, 3)).astype(np.uint8)
    add(ux, uw, x_zp=131, w_zp=7, y=np.uint8, y_zp=120, relu=True)
    add(ux, w8, x_zp=2, y=np.uint8, y_zp=250, bias=b)
    add(x8, w8[:, :4], group=4, strides=(2, 1), pads=(0, 1, 2, 0), dil=(2, 1))
    dw = rng.integers(-128, 128, (16, 1, 3, 3)).astype(np.int8)
    add(x8, dw, group=16, bias=rng.integers(-1000, 1000, 16), sy=0.02)
    add(np.full((1, 16, 6, 6), 127, np.int8), np.full((16, 1, 3, 3), -128, np.int8), group=16,
        sy=1.0)  # fmt: skip
    add(x8[:, :, 0], w8[:, :, 0], pads=(1, 1), strides=(1,), dil=(1,))  # 1-D
    add(x8, w8, relu=True, strides=(2, 1), bias=b, layout="nhwc")  # Transposes in the session
    a8 = rng.integers(-128, 128, (2, 3, 5, 64)).astype(np.int8)  # batched a, 2-D b
    b8 = rng.integers(-128, 128, (64, 24)).astype(np.int8)
    for sa, sb, sy in ((1.0, 1.0, 2.0), (0.5, 1 / 32, 1.0), (0.0123, 0.0071, 0.0391)):
        add_matmul(a8, b8, sa=sa, sb=sb, sy=sy)
    add_matmul(a8[0, 0], b8, sb=[0.01 * (i + 1) for i in range(24)], a_zp=4, y_zp=-7)
    for av in (-128, 127):  # every product at the extreme, K = 4096, one row (GEMV)
        add_matmul(np.full((1, 4096), av, np.int8), np.full((4096, 8), -128, np.int8),
                   sb=1e-3, sy=1e3)  # fmt: skip
    # The longest K taken: raw sums of 255 * 255 products just below 2**31.
    add_matmul(np.full((1, MAX_K), 127, np.int8), np.full((MAX_K, 2), 127, np.int8),
               sb=1e-4, sy=1e3)  # fmt: skip
    ua = rng.integers(0, 256, (7, 64)).astype(np.uint8)
    add_matmul(ua, rng.integers(0, 256, (64, 5)).astype(np.uint8), a_zp=100, b_zp=3,
               y=np.uint8, y_zp=128)  # fmt: skip
    return cases


def _reference_layer(spec: LayerSpec, x: np.ndarray) -> np.ndarray:
    """The layer on the NumPy datapath with int64 accumulation (obviously exact)."""
    mult = dp.requant_multiplier(spec.x_scale, spec.w_scale, spec.y_scale)
    if spec.op == "QLinearMatMul":
        acc = dp.int_matmul_reference(
            x.astype(np.int64) - spec.x_zero_point, spec.w.astype(np.int64) - spec.w_zero_point
        )
        return dp.requantize(dp.wrap32(acc), mult, spec.y_dtype, spec.y_zero_point)
    if spec.layout == "nhwc":
        y = _reference_layer(replace(spec, layout="nchw"), np.moveaxis(x, -1, 1))
        return np.moveaxis(y, 1, -1)
    acc = dp.conv_accumulate_reference(
        x.astype(np.int64) - spec.x_zero_point,
        spec.w.astype(np.int64) - spec.w_zero_point,
        strides=spec.strides,
        pads=spec.pads,
        dilations=spec.dilations,
        group=spec.group,
    )
    shape = (-1,) + (1,) * (acc.ndim - 2)
    if spec.bias is not None:
        acc = acc + spec.bias.astype(np.int64).reshape(shape)
    mult = mult.reshape(shape) if mult.size > 1 else mult.reshape(())
    return dp.requantize(dp.wrap32(acc), mult, spec.y_dtype, spec.y_zero_point, spec.relu)


def self_check() -> bool:
    """Run the adversarial layers on the engine and on the reference; True when every bit
    agrees (False too when onnxruntime is missing or refuses a layer)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    for spec, x in _check_cases(np.random.default_rng(20261123)):
        try:
            got = Layer(spec)(x)
        except Exception:  # noqa: BLE001 - any onnxruntime failure disables the engine
            return False
        want = _reference_layer(spec, x)
        if not applies(spec) or got.dtype != want.dtype or not np.array_equal(got, want):
            return False
    return True


def available() -> bool:
    """Whether the engine passed its self-check in this process (run once, on first need)."""
    if _state["checked"] is None:
        with _lock:
            if _state["checked"] is None:
                _state["checked"] = self_check()
    return bool(_state["checked"])
