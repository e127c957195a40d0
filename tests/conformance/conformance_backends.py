"""Deliberately wrong backends for the conformance runner's tests.

``half_away_from_zero`` is the emulator with the datapath's rounding replaced by round half
away from zero. The datapath may round through ``datapath.rne``, through a name bound to it
at import time, or with ``np.rint`` directly (in place, ``np.rint(v, out=v)``). So the
substitution replaces ``numpy.rint`` itself, ``datapath.rne``, and every global of a
``runtime_emulator`` module bound to either, for the duration of the call only. If the
emulator ever rounds some other way, the tie test fails: it checks that the substitution
changes exactly the cases tagged ``tie``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import numpy as np

from runtime_emulator import datapath, ort_engine
from systolic_sdk.conformance.runners import emulator

_RINT = np.rint
_RNE = datapath.rne


def _half_away(x, out=None, **kwargs):
    """``rint`` with ties rounded away from zero (exact: ``x - trunc(x)`` is exact)."""
    a = np.asarray(x)
    rounded = _RINT(a, **kwargs)
    trunc = np.trunc(a)
    with np.errstate(invalid="ignore"):
        tie = np.abs(a - trunc) == 0.5
    result = np.where(tie, trunc + np.sign(a), rounded).astype(rounded.dtype, copy=False)
    if out is not None:
        out[...] = result
        return out
    return result


@contextlib.contextmanager
def half_away_rounding() -> Iterator[None]:
    """Round half away from zero everywhere the emulator rounds, inside the block."""
    patched: list[tuple[object, str, object]] = [(np, "rint", _RINT), (datapath, "rne", _RNE)]
    for name, module in list(sys.modules.items()):
        if name.startswith("runtime_emulator") and module is not None:
            for attr, value in list(vars(module).items()):
                if (value is _RINT or value is _RNE) and (module, attr) != (datapath, "rne"):
                    patched.append((module, attr, value))
    try:
        for obj, attr, _ in patched:
            setattr(obj, attr, _half_away)
        yield
    finally:
        for obj, attr, value in patched:
            setattr(obj, attr, value)


def half_away_from_zero(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The emulator's NumPy datapath, rounding half away from zero instead of half to even
    (the onnxruntime engine would not see the substitution)."""
    with half_away_rounding(), ort_engine.using("numpy"):
        return emulator(model_path, inputs)


def wrong_shape(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Correct values with an extra leading axis on QLinearMatMul outputs."""
    outputs = emulator(model_path, inputs)
    if "qlinearmatmul" in model_path:
        return [o[None] for o in outputs]
    return outputs


def wrong_dtype(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Correct values as int16 for QLinearAdd outputs."""
    outputs = emulator(model_path, inputs)
    if "qlinearadd" in model_path:
        return [o.astype(np.int16) for o in outputs]
    return outputs


def one_ulp_off(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Float outputs with their last element one ulp away (integers untouched)."""
    outputs = emulator(model_path, inputs)
    for o in outputs:
        if o.dtype == np.float32 and o.size:
            flat = o.reshape(-1)
            flat[-1] = np.nextafter(flat[-1], np.float32(np.inf))
    return outputs


def raises_on_relu(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Raises on QLinearRelu cases (a board that rejects the op)."""
    if "qlinearrelu" in model_path:
        raise RuntimeError("QLinearRelu is not supported by this board\nsecond line")
    return emulator(model_path, inputs)


def returns_dict(model_path: str, inputs: list[np.ndarray]) -> dict:
    """Returns a dict instead of a list."""
    return {"y": emulator(model_path, inputs)[0]}
