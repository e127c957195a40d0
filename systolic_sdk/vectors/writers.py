"""File formats of the golden vectors: ONNX TensorProto, .npy, $readmemh hex, C header."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
from onnx import numpy_helper

from systolic_sdk.vectors.extract import LayerVectors

FORMATS = ("pb", "npy", "c-header", "hex")
#: Hex digits per element in the hex format (two's complement; float32 as its bits).
HEX_WIDTH = {np.dtype(np.int8): 2, np.dtype(np.uint8): 2, np.dtype(np.int32): 8,
             np.dtype(np.float32): 8}  # fmt: skip
C_TYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t",
           np.dtype(np.int32): "int32_t"}  # fmt: skip
HEADER_NAME = "layers.h"


def pb_bytes(arr: np.ndarray, name: str) -> bytes:
    """``arr`` as a serialized ONNX TensorProto named ``name``."""
    return numpy_helper.from_array(np.asarray(arr), name).SerializeToString()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def hex_bytes(arr: np.ndarray) -> bytes:
    """One element per line in C order, two's complement, fixed width, lower case."""
    a = np.asarray(arr)
    width = HEX_WIDTH.get(a.dtype)
    if width is None:
        raise ValueError(f"no hex format for {a.dtype.name}")
    unsigned = a.reshape(-1).view(f"u{a.dtype.itemsize}")
    return "".join(f"{int(v):0{width}x}\n" for v in unsigned).encode()


def f32_bits(v: np.float32) -> int:
    """The IEEE-754 bit pattern of a float32 value."""
    return int(np.asarray(v, np.float32).reshape(1).view(np.uint32)[0])


def f32_hex_literal(v: np.float32) -> str:
    """A C99 hexadecimal float literal of a float32 value (exact), e.g. ``0x1.8p-5f``."""
    f = float(np.float32(v))
    if not np.isfinite(f):
        raise ValueError(f"{f} has no C literal")
    mant, _, exp = f.hex().partition("p")
    mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
    return f"{mant}p{exp}f"


def c_ident(text: str) -> str:
    """An upper-case C identifier fragment from a layer name."""
    s = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").upper()
    return s or "LAYER"


def layer_prefix(layer: LayerVectors) -> str:
    return f"L{layer.index}_{c_ident(layer.name)}"


def _c_int(v: int) -> str:
    return "(-2147483647 - 1)" if v == -(2**31) else str(v)


def _c_array(name: str, arr: np.ndarray) -> list[str]:
    a = np.asarray(arr)
    ctype = C_TYPES[a.dtype]
    n = a.size
    lines = [f"#define {name}_LEN {n}", f"#define {name}_NDIM {a.ndim}"]
    lines += [f"#define {name}_DIM{i} {d}" for i, d in enumerate(a.shape)]
    vals = [_c_int(int(v)) for v in a.reshape(-1)]
    rows = [", ".join(vals[i : i + 16]) for i in range(0, n, 16)]
    body = ",\n    ".join(rows)
    lines.append(f"static const {ctype} {name}[{n}] SYSTOLIC_UNUSED = {{\n    {body}\n}};")
    return lines


def c_header(layers: Sequence[LayerVectors], model_sha256: str) -> bytes:
    """One header holding every layer's arrays (with ``_LEN``, ``_NDIM``, ``_DIMi``
    defines) and its float32 scalars as exact hex-float constants and bit patterns."""
    out = [
        "/* Golden vectors of a Systolic graph (generated; do not edit). */",
        f"/* model sha256: {model_sha256} */",
        "#ifndef SYSTOLIC_GOLDEN_LAYERS_H",
        "#define SYSTOLIC_GOLDEN_LAYERS_H",
        "#include <stdint.h>",
        "#if defined(__GNUC__)",
        "#define SYSTOLIC_UNUSED __attribute__((unused))",
        "#else",
        "#define SYSTOLIC_UNUSED",
        "#endif",
        f"#define SYSTOLIC_NUM_LAYERS {len(layers)}",
        "",
    ]
    for layer in layers:
        p = layer_prefix(layer)
        out.append(f"/* layer {layer.index}: {layer.name} ({layer.op}) */")
        out.append(f"#define {p}_RELU {int(layer.relu)}")
        for key, value in layer.scalars.items():
            k = f"{p}_{key.upper()}"
            out.append(f"static const float {k} SYSTOLIC_UNUSED = {f32_hex_literal(value)};")
            out.append(f"#define {k}_BITS 0x{f32_bits(value):08x}u")
        for key, arr in layer.arrays.items():
            out += _c_array(f"{p}_{key.upper()}", arr)
        out.append("")
    out.append("#endif /* SYSTOLIC_GOLDEN_LAYERS_H */")
    return ("\n".join(out) + "\n").encode()
