"""Golden vectors of a Systolic graph for firmware and hardware tests.

``export_vectors(model, data, out, formats, samples)`` runs the graph on the emulator and
writes, per accelerator layer (QLinearConv, QLinearConv_nhwc, QLinearMatMul) its int8
input, its weights as the array's K x J GEMM operand (and the graph's own tensor), the
int32 bias and accumulators before scaling, the float32 multiplier and the int8 output;
per Systolic QLinearAdd its inputs, both inputs rescaled to the output scale, the two
multipliers and the output. Formats: ONNX TensorProto (``pb``), ``npy``, ``hex``
($readmemh) and one C header ``layers.h``; ``manifest.json`` lists every file with its
sha256. Every layer is checked (requantized accumulators equal the emulator's output)
before anything is written, and the folder appears atomically.
"""

from systolic_sdk.vectors.export import export_vectors, parse_formats
from systolic_sdk.vectors.extract import LayerVectors, VectorError, extract_layers

__all__ = ["LayerVectors", "VectorError", "export_vectors", "extract_layers", "parse_formats"]
