"""Tensor quantization overrides: parse and validate the onnxruntime form.

The form (a Python dict or a JSON file) maps a tensor name to a list of dicts, one for
the whole tensor or one per channel::

    {"conv1_1": [{"scale": 0.005, "zero_point": 12}]}

Keys of one dict: ``scale`` and ``zero_point`` (given together), or ``rmin`` / ``rmax``
(either or both: they replace that side of the calibrated range, which the quantizer
turns into scale and zero point); ``symmetric`` and ``reduce_range`` (booleans: how that
range becomes parameters); ``quant_type`` (``QuantType`` or a name such as
``"QUInt8"``); ``axis`` (the channel axis, in the first dict of a per-channel list). A
numpy integer zero point (``np.uint8(12)``) also gives the type. An override without a
scale has an empty ``scale`` tuple.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from systolic_sdk.errors import SdkError
from systolic_sdk.quantization.config import TensorOverride
from systolic_sdk.quantization.types import QuantType

_KEYS = ("scale", "zero_point", "quant_type", "axis", "rmin", "rmax", "symmetric", "reduce_range")
_NP_TYPES = {
    np.dtype(np.int8): QuantType.QInt8,
    np.dtype(np.uint8): QuantType.QUInt8,
    np.dtype(np.int16): QuantType.QInt16,
    np.dtype(np.uint16): QuantType.QUInt16,
}
_RANGES = {
    QuantType.QInt8: (-128, 127),
    QuantType.QUInt8: (0, 255),
    QuantType.QInt16: (-32768, 32767),
    QuantType.QUInt16: (0, 65535),
}


class OverrideError(SdkError):
    """A tensor override is malformed or does not fit the model."""


def load_tensor_overrides(path: str | os.PathLike[str]) -> dict[str, TensorOverride]:
    """Read and validate a JSON overrides file (see the module docstring for the form)."""
    p = Path(path)
    if not p.exists():
        raise OverrideError(f"{p}: no such file")
    if p.is_dir():
        raise OverrideError(f"{p}: is a folder, expected a JSON overrides file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise OverrideError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OverrideError(
            f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    return parse_tensor_overrides(data, source=str(p))


def parse_tensor_overrides(
    data: Any, source: str = "tensor overrides"
) -> dict[str, TensorOverride]:
    """Validate the onnxruntime ``TensorQuantOverrides`` form and convert it.

    ``source`` names the origin (a file path) in error messages.
    """
    if not isinstance(data, Mapping):
        raise OverrideError(
            f"{source}: expected an object mapping tensor names to lists of dicts, "
            f"got {_kind(data)}"
        )
    result: dict[str, TensorOverride] = {}
    for name, entries in data.items():
        if not isinstance(name, str) or not name:
            raise OverrideError(f"{source}: tensor names must be non-empty strings, got {name!r}")
        result[name] = _parse_entry(name, entries, source)
    return result


def _parse_entry(name: str, entries: Any, source: str) -> TensorOverride:
    where = f"{source}: tensor '{name}'"
    if isinstance(entries, Mapping):
        entries = [entries]  # a lone dict is accepted as the one-dict list
    if not isinstance(entries, (list, tuple)):
        raise OverrideError(f"{where}: expected a list of dicts, got {_kind(entries)}")
    if not entries:
        raise OverrideError(f"{where}: empty list; give one dict per tensor or one per channel")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise OverrideError(f"{where}: entry {i} is {_kind(entry)}, expected a dict")
        unknown = [k for k in entry if k not in _KEYS]
        if unknown:
            raise OverrideError(
                f"{where}: unsupported key '{unknown[0]}' (supported: {', '.join(_KEYS)})"
            )
    first = entries[0]
    per_channel = len(entries) > 1
    quant_type = _quant_type(first, where)
    axis = first.get("axis")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, numbers.Integral)):
        raise OverrideError(f"{where}: 'axis' must be an integer, got {axis!r}")
    has_scale = any("scale" in e or "zero_point" in e for e in entries)
    has_range = any("rmin" in e or "rmax" in e for e in entries)
    flags = {k: _bool(first[k], where, k) for k in ("symmetric", "reduce_range") if k in first}
    if has_scale and has_range:
        raise OverrideError(f"{where}: give either scale/zero_point or rmin/rmax, not both")
    if has_scale and flags:
        key = next(iter(flags))
        raise OverrideError(f"{where}: '{key}' applies without scale/zero_point (they fix it)")
    if not has_scale:
        if per_channel and has_range:
            raise OverrideError(
                f"{where}: rmin/rmax is per tensor; give one dict, or per-channel scale/zero_point"
            )
        if per_channel:
            raise OverrideError(f"{where}: per-channel entries need 'scale' and 'zero_point'")
        rmin = _float(first.get("rmin"), where, "rmin") if "rmin" in first else None
        rmax = _float(first.get("rmax"), where, "rmax") if "rmax" in first else None
        if rmin is not None and rmax is not None and rmin > rmax:
            raise OverrideError(f"{where}: rmin {rmin} is greater than rmax {rmax}")
        return TensorOverride(
            scale=(), quant_type=quant_type, axis=_int(axis), rmin=rmin, rmax=rmax, **flags
        )
    scales: list[float] = []
    zero_points: list[int] = []
    for i, entry in enumerate(entries):
        at = f"{where}, channel {i}" if per_channel else where
        if "scale" not in entry or "zero_point" not in entry:
            missing = "zero_point" if "scale" in entry else "scale"
            raise OverrideError(f"{at}: '{missing}' is missing (scale and zero_point go together)")
        for key in ("quant_type", "axis"):
            if i > 0 and key in entry and entry[key] != first.get(key):
                raise OverrideError(f"{at}: '{key}' differs from channel 0")
        scale = _float(entry["scale"], at, "scale")
        if not scale > 0:
            raise OverrideError(f"{at}: scale must be positive, got {scale}")
        scales.append(scale)
        zp_type = _np_quant_type(entry["zero_point"])
        if quant_type is None:
            quant_type = zp_type
        elif zp_type is not None and zp_type != quant_type:
            raise OverrideError(
                f"{at}: zero_point type {zp_type} contradicts quant_type {quant_type}"
            )
        zero_points.append(_zero_point(entry["zero_point"], at))
    if quant_type is not None:
        lo, hi = _RANGES[quant_type]
        for i, zp in enumerate(zero_points):
            if not lo <= zp <= hi:
                at = f"{where}, channel {i}" if per_channel else where
                raise OverrideError(f"{at}: zero_point {zp} is outside {quant_type} [{lo}, {hi}]")
    return TensorOverride(
        scale=tuple(scales),
        zero_point=tuple(zero_points),
        quant_type=quant_type,
        axis=_int(axis),
    )


def _bool(value: Any, where: str, key: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OverrideError(f"{where}: '{key}' must be true or false, got {value!r}")
    return bool(value)


def check_overrides_fit_model(
    overrides: Mapping[str, TensorOverride],
    model: onnx.ModelProto,
    source: str = "tensor overrides",
) -> None:
    """Refuse overrides for tensors the model lacks, or with a wrong number of channels."""
    graph = model.graph
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names.update(o for n in graph.node for o in n.output)
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    for name, ov in overrides.items():
        if name not in names:
            raise OverrideError(f"{source}: tensor '{name}' is not in the model")
        n = len(ov.scale)
        shape = inits.get(name)
        if n <= 1 or shape is None:
            continue
        if ov.axis is not None:
            if not -len(shape) <= ov.axis < len(shape):
                raise OverrideError(
                    f"{source}: tensor '{name}': axis {ov.axis} is out of range for shape {shape}"
                )
            if shape[ov.axis] != n:
                raise OverrideError(
                    f"{source}: tensor '{name}': {n} channel entries but dimension {ov.axis} "
                    f"of shape {shape} is {shape[ov.axis]}"
                )
        elif n not in shape:
            raise OverrideError(
                f"{source}: tensor '{name}': {n} channel entries match no dimension "
                f"of shape {shape}"
            )


def overrides_to_json(overrides: Mapping[str, TensorOverride]) -> dict[str, list[dict[str, Any]]]:
    """The onnxruntime dict form of ``overrides`` (JSON-serializable)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, ov in overrides.items():
        if ov.scale:
            entries: list[dict[str, Any]] = []
            for i, s in enumerate(ov.scale):
                entry: dict[str, Any] = {"scale": float(s)}
                if ov.zero_point is not None:
                    entry["zero_point"] = int(ov.zero_point[i])
                entries.append(entry)
        else:
            entry = {}
            if ov.rmin is not None:
                entry["rmin"] = ov.rmin
            if ov.rmax is not None:
                entry["rmax"] = ov.rmax
            for key in ("symmetric", "reduce_range"):
                if getattr(ov, key) is not None:
                    entry[key] = getattr(ov, key)
            entries = [entry]
        if ov.quant_type is not None:
            entries[0]["quant_type"] = ov.quant_type.name
        if ov.axis is not None:
            entries[0]["axis"] = ov.axis
        out[name] = entries
    return out


def _quant_type(entry: Mapping[str, Any], where: str) -> QuantType | None:
    value = entry.get("quant_type")
    if value is None or isinstance(value, QuantType):
        return value
    if isinstance(value, str):
        try:
            return QuantType.from_string(value)
        except ValueError as exc:
            raise OverrideError(f"{where}: {exc}") from None
    # onnxruntime's own QuantType enum (or any enum with the same member names)
    name = getattr(value, "name", None)
    if isinstance(name, str) and name in QuantType.__members__:
        return QuantType[name]
    raise OverrideError(f"{where}: 'quant_type' must be a QuantType or a name, got {value!r}")


def _np_quant_type(value: Any) -> QuantType | None:
    if isinstance(value, (np.generic, np.ndarray)):
        return _NP_TYPES.get(np.asarray(value).dtype)
    return None


def _zero_point(value: Any, where: str) -> int:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool):
        raise OverrideError(f"{where}: zero_point must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise OverrideError(f"{where}: zero_point must be an integer, got {value!r}")


def _float(value: Any, where: str, key: str) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OverrideError(f"{where}: '{key}' must be a number, got {value!r}")
    f = float(np.float32(value)) if isinstance(value, np.floating) else float(value)
    if not math.isfinite(f):
        raise OverrideError(f"{where}: '{key}' must be finite, got {value!r}")
    return f


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"
