"""Calibration tables: write ranges to a file and read them back.

Formats (chosen by ``fmt``, or by the file's suffix: ``.json``, ``.flatbuffers``/``.fb``,
anything else is text):

* JSON: ``{"format": "systolic-calibration-table", "version": 1, "method": ...,
  "ranges": {tensor: [rmin, rmax]}}``. Floats are written with ``repr`` so they read
  back bit for bit. Reading also accepts onnxruntime's ``calibration.json`` (tensor ->
  ``{"lowest", "highest"}``, plain or wrapped in ``TensorsData``) and a plain
  ``{tensor: [rmin, rmax]}``.
* Text: one ``tensor rmin rmax`` line per tensor (the name may hold spaces). Reading also
  accepts onnxruntime's ``calibration.cache`` lines ``tensor value``, read as
  ``(-value, value)``.
* FlatBuffers: onnxruntime's TensorRT calibration table (schema ``TrtTable { dict:
  [KeyValue] }``, ``KeyValue { key: string; value: string }``), the value being the
  decimal text of ``max(|rmin|, |rmax|)`` - TensorRT takes a symmetric dynamic range,
  so the table reads back as ``(-t, t)``. Encoded and decoded here in pure Python.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

from systolic_sdk.errors import SdkError
from systolic_sdk.graph.io import check_output_path, write_bytes_atomic

Ranges = dict[str, tuple[float, float]]
FORMATS = ("json", "text", "flatbuffers")
JSON_FORMAT_TAG = "systolic-calibration-table"


class CalibrationTableError(SdkError):
    """A calibration table cannot be read or written."""


def table_format(path: str | Path, fmt: str | None = None) -> str:
    """The format to use for ``path``: ``fmt`` if given, else from the suffix."""
    if fmt is not None:
        key = fmt.lower()
        aliases = {"txt": "text", "cache": "text", "fb": "flatbuffers", "flatbuffer": "flatbuffers"}
        key = aliases.get(key, key)
        if key not in FORMATS:
            raise CalibrationTableError(
                f"unknown calibration table format '{fmt}' (choose from {', '.join(FORMATS)})"
            )
        return key
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".flatbuffers", ".fb", ".fbs"):
        return "flatbuffers"
    if suffix in ("", ".txt", ".text", ".cache", ".table", ".tbl"):
        return "text"
    raise CalibrationTableError(
        f"{path}: cannot tell the table format from the suffix '{suffix}' "
        f"(use .json, .txt or .flatbuffers, or give the format: {', '.join(FORMATS)})"
    )


def _checked(ranges: Mapping[str, tuple[float, float]]) -> Ranges:
    out: Ranges = {}
    for name, pair in ranges.items():
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise CalibrationTableError(f"tensor '{name}': range must be two numbers") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise CalibrationTableError(f"tensor '{name}': invalid range ({lo}, {hi})")
        out[str(name)] = (lo, hi)
    return out


# ---------------------------------------------------------------- encoders


def encode_json(ranges: Mapping[str, tuple[float, float]], method: str | None = None) -> bytes:
    doc = {
        "format": JSON_FORMAT_TAG,
        "version": 1,
        "method": method,
        "ranges": {k: [lo, hi] for k, (lo, hi) in _checked(ranges).items()},
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def encode_text(ranges: Mapping[str, tuple[float, float]]) -> bytes:
    lines = []
    for name, (lo, hi) in sorted(_checked(ranges).items()):
        if "\n" in name or not name.strip():
            raise CalibrationTableError(f"tensor '{name}': name cannot be written as text")
        lines.append(f"{name} {lo!r} {hi!r}\n")
    return "".join(lines).encode()


def _pad4(buf: bytearray) -> None:
    buf.extend(b"\0" * (-len(buf) % 4))


def encode_flatbuffers(ranges: Mapping[str, tuple[float, float]]) -> bytes:
    """onnxruntime's TensorRT ``TrtTable``: keys sorted, value ``str(max(|lo|, |hi|))``.

    Layout (every reference points forward, as uoffsets must): root offset, the
    TrtTable vtable and table, the vector of KeyValue offsets, the shared KeyValue
    vtable, the KeyValue tables, then the strings.
    """
    items = sorted(_checked(ranges).items())
    n = len(items)
    buf = bytearray(struct.pack("<I", 12))  # root: TrtTable at 12
    buf += struct.pack("<HHH", 6, 8, 4) + b"\0\0"  # TrtTable vtable at 4: dict at +4
    buf += struct.pack("<iI", 12 - 4, 20 - 16)  # TrtTable at 12; dict vector at 20
    vec = len(buf)
    buf += struct.pack("<I", n) + b"\0" * (4 * n)
    kv_vtable = len(buf)
    buf += struct.pack("<HHHH", 8, 12, 4, 8)  # KeyValue: key at +4, value at +8
    tables = len(buf)
    buf += b"\0" * (12 * n)
    for i, (name, (lo, hi)) in enumerate(items):
        table = tables + 12 * i
        slot = vec + 4 + 4 * i
        struct.pack_into("<I", buf, slot, table - slot)
        struct.pack_into("<i", buf, table, table - kv_vtable)
        for field, text in ((table + 4, name), (table + 8, str(max(abs(lo), abs(hi))))):
            _pad4(buf)
            struct.pack_into("<I", buf, field, len(buf) - field)
            data = text.encode()
            buf += struct.pack("<I", len(data)) + data + b"\0"
    _pad4(buf)
    return bytes(buf)


# ---------------------------------------------------------------- decoders


def _num(value: object, where: str) -> float:
    if isinstance(value, dict) and "data" in value:
        value = value["data"]
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalibrationTableError(f"{where}: expected a number, got {value!r}")
    return float(value)


def decode_json(data: bytes, origin: str = "table") -> Ranges:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CalibrationTableError(f"{origin}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CalibrationTableError(f"{origin}: expected a JSON object")
    if doc.get("format") == JSON_FORMAT_TAG:
        entries = doc.get("ranges")
        if not isinstance(entries, dict):
            raise CalibrationTableError(f"{origin}: 'ranges' must be an object")
        out = {}
        for k, v in entries.items():
            if not isinstance(v, list) or len(v) != 2:
                raise CalibrationTableError(f"{origin}: tensor '{k}': expected [rmin, rmax]")
            out[k] = (_num(v[0], f"{origin}: tensor '{k}'"), _num(v[1], f"{origin}: tensor '{k}'"))
        return _checked(out)
    if doc.get("CLS") == "TensorsData" and isinstance(doc.get("data"), dict):
        doc = doc["data"]
    out = {}
    for k, v in doc.items():
        if isinstance(v, list) and len(v) == 2:  # plain {tensor: [rmin, rmax]}
            where = f"{origin}: tensor '{k}'"
            out[k] = (_num(v[0], where), _num(v[1], where))
            continue
        if not isinstance(v, dict) or "lowest" not in v or "highest" not in v:
            raise CalibrationTableError(
                f"{origin}: tensor '{k}': expected [rmin, rmax] or lowest/highest "
                "(not a calibration table?)"
            )
        where = f"{origin}: tensor '{k}'"
        out[k] = (_num(v["lowest"], where), _num(v["highest"], where))
    return _checked(out)


def decode_text(data: bytes, origin: str = "table") -> Ranges:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise CalibrationTableError(f"{origin}: not a text calibration table") from None
    out: Ranges = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parsed = _text_line(line)
        if parsed is None:
            raise CalibrationTableError(
                f"{origin}: line {number}: expected 'tensor rmin rmax' or 'tensor value'"
            )
        out[parsed[0]] = parsed[1]
    return _checked(out)


def _text_line(line: str) -> tuple[str, tuple[float, float]] | None:
    """``name rmin rmax`` (ours) or ``name value`` (onnxruntime's cache, symmetric)."""
    parts = line.rsplit(" ", 2)
    if len(parts) == 3 and parts[0]:
        try:
            return parts[0], (float(parts[1]), float(parts[2]))
        except ValueError:
            pass
    parts = line.rsplit(" ", 1)
    if len(parts) == 2 and parts[0]:
        try:
            t = abs(float(parts[1]))
        except ValueError:
            return None
        return parts[0], (-t, t)
    return None


def decode_flatbuffers(data: bytes, origin: str = "table") -> Ranges:
    """Read any valid ``TrtTable`` buffer (ours or flatbuffers' Builder output)."""
    try:
        return _checked(_read_trt_table(memoryview(data)))
    except (struct.error, IndexError, UnicodeDecodeError, ValueError) as exc:
        raise CalibrationTableError(f"{origin}: not a TensorRT calibration table ({exc})") from None


def _read_trt_table(buf: memoryview) -> Ranges:
    def u32(pos: int) -> int:
        return struct.unpack_from("<I", buf, pos)[0]

    def field(table: int, slot: int) -> int | None:
        vtable = table - struct.unpack_from("<i", buf, table)[0]
        vt_size = struct.unpack_from("<H", buf, vtable)[0]
        if 4 + 2 * slot + 2 > vt_size:
            return None
        off = struct.unpack_from("<H", buf, vtable + 4 + 2 * slot)[0]
        return table + off if off else None

    def string(pos: int) -> str:
        target = pos + u32(pos)
        n = u32(target)
        if target + 4 + n > len(buf):
            raise ValueError("string runs past the end")
        return bytes(buf[target + 4 : target + 4 + n]).decode()

    root = u32(0)
    dict_field = field(root, 0)
    out: Ranges = {}
    if dict_field is None:
        return out
    vec = dict_field + u32(dict_field)
    for i in range(u32(vec)):
        slot = vec + 4 + 4 * i
        table = slot + u32(slot)
        key_pos, value_pos = field(table, 0), field(table, 1)
        if key_pos is None or value_pos is None:
            raise ValueError(f"entry {i} lacks a key or value")
        t = abs(float(string(value_pos)))
        out[string(key_pos)] = (-t, t)
    return out


# ---------------------------------------------------------------- files


def write_table(
    ranges: Mapping[str, tuple[float, float]],
    path: str | Path,
    fmt: str | None = None,
    *,
    method: str | None = None,
) -> Path:
    """Write ``ranges`` to ``path`` atomically in ``fmt`` (default: from the suffix)."""
    out = check_output_path(path)
    kind = table_format(out, fmt)
    if kind == "json":
        data = encode_json(ranges, method)
    elif kind == "text":
        data = encode_text(ranges)
    else:
        data = encode_flatbuffers(ranges)
    write_bytes_atomic(out, data)
    return out


def read_table(path: str | Path, fmt: str | None = None) -> Ranges:
    """Read a calibration table; the format is ``fmt``, else guessed from the content."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CalibrationTableError(f"{p}: no such calibration table") from None
    except OSError as exc:
        raise CalibrationTableError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise CalibrationTableError(f"{p}: empty calibration table")
    if fmt is None:
        head = data.lstrip()[:1]
        if head in (b"{",):
            kind = "json"
        elif p.suffix.lower() in (".flatbuffers", ".fb", ".fbs") or b"\0" in data[:64]:
            kind = "flatbuffers"
        else:
            kind = "text"
    else:
        kind = table_format(p, fmt)
    decode = {"json": decode_json, "text": decode_text, "flatbuffers": decode_flatbuffers}[kind]
    ranges = decode(data, str(p))
    if not ranges:
        raise CalibrationTableError(f"{p}: calibration table holds no tensors")
    return ranges
