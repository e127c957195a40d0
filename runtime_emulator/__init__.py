"""Bit-exact emulator of the Systolic int8 datapath and a quantized-graph executor.

Public API:

- :func:`run` ``(model, feeds, *, trace=False, config=None, target=None)`` runs a
  whole graph; :class:`Executor` keeps a loaded graph for repeated runs and yields
  node-by-node records (:meth:`Executor.iter_nodes`);
- :class:`ArrayConfig`, :func:`layer_stats`, :class:`LayerStats`: the array model;
- :func:`load_input_sets`, :func:`write_outputs`, :func:`write_trace`: inputs and
  outputs of runs (``runtime_emulator.io``);
- ``runtime_emulator.ort_engine``: which engine computes conv and matmul layers
  (``set_engine("auto" | "numpy" | "onnxruntime")``, ``using(...)``; the same bits either
  way, onnxruntime's kernels being faster where their self-check passed).
"""

from runtime_emulator.array import ArrayConfig, LayerStats, layer_stats, record_stats
from runtime_emulator.executor import (
    ExecutionError,
    Executor,
    FeedError,
    NodeRecord,
    TargetError,
    resolve_target,
    run,
)
from runtime_emulator.io import InputSet, load_input_sets, write_outputs, write_trace

__all__ = [
    "ArrayConfig",
    "ExecutionError",
    "Executor",
    "FeedError",
    "InputSet",
    "LayerStats",
    "NodeRecord",
    "TargetError",
    "layer_stats",
    "load_input_sets",
    "record_stats",
    "resolve_target",
    "run",
    "write_outputs",
    "write_trace",
]
