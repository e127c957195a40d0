"""Golden vectors of a Systolic graph for firmware and hardware tests."""

from systolic_sdk.vectors.export import export_vectors, parse_formats
from systolic_sdk.vectors.extract import LayerVectors, VectorError, extract_layers

__all__ = ["LayerVectors", "VectorError", "export_vectors", "extract_layers", "parse_formats"]
