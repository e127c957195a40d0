"""The manifest (``manifest.json``) of an export: what every file holds, and its sha256."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

import systolic_sdk
from runtime_emulator.array import ArrayConfig
from systolic_sdk.vectors.extract import IM2COL_K_ORDER, NHWC_K_ORDER, LayerVectors
from systolic_sdk.vectors.writers import f32_bits

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scalar_entry(v: np.float32) -> dict[str, Any]:
    """A float32 value as its decimal repr, its C hex float and its bit pattern."""
    f = float(np.float32(v))
    return {"float": f, "hex": f.hex(), "bits": f"0x{f32_bits(v):08x}"}


def layer_entry(layer: LayerVectors, files: list[dict[str, Any]], header_prefix: str) -> dict:
    """The manifest record of one layer."""
    return {
        "index": layer.index,
        "name": layer.name,
        "op": layer.op,
        "attributes": layer.attributes,
        "relu": layer.relu,
        "c_prefix": header_prefix,
        "tensors": {
            k: {"shape": list(a.shape), "dtype": a.dtype.name, "layout": layer.layouts.get(k, "")}
            for k, a in layer.arrays.items()
        },
        "scalars": {k: scalar_entry(v) for k, v in layer.scalars.items()},
        "files": files,
    }


def manifest(
    model_sha256: str,
    samples: int,
    formats: list[str],
    layers: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    header: dict[str, Any] | None,
) -> dict[str, Any]:
    """The whole manifest."""
    cfg = ArrayConfig()
    return {
        "manifest_version": MANIFEST_VERSION,
        "sdk_version": systolic_sdk.__version__,
        "model_sha256": model_sha256,
        "samples": samples,
        "formats": formats,
        "array": {**dataclasses.asdict(cfg), "DIM": cfg.dim},
        "conventions": {
            "conv_weights": "im2col GEMM operand K x J (G x K x J when grouped), "
            f"K = C/group*kh*kw ordered ({', '.join(IM2COL_K_ORDER)}) slowest first for "
            f"QLinearConv (NCHW), ({', '.join(NHWC_K_ORDER)}) for QLinearConv_nhwc, "
            "J = output channels; weights_oihw / weights_hwio keep the graph's tensor",
            "acc": "int32 accumulator wrap32(bias + sum x*w) before scaling",
            "multiplier": "M = f32(f32(x_scale * w_scale) / y_scale); "
            "output = sat8(rne(f32(f32(acc) * M))), then ReLU when relu",
            "hex": "one element per line, C order, two's complement, 2 hex digits for int8, "
            "8 for int32 and for a float32 scalar's bit pattern ($readmemh)",
            "index": "a layer's node position in execution order; L<index>_ prefixes its "
            "names in the C header",
            "files": "layers/<index>_<name>/<tensor>.<format>; graph outputs in graph_outputs/",
        },
        "layers": layers,
        "graph_outputs": outputs,
        "header": header,
    }
