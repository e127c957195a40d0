"""Calibration: data sources, preprocessing, streaming statistics, ranges and tables.

Public API::

    calibrate(model, reader, tensor_names=None, method="minmax", **options)
        -> {tensor: (rmin, rmax)}
    open_source(path, model, dataset_size=None, preprocess=None, batch_size=1)
        -> CalibrationDataReader
    collect(model, reader, ...) -> {tensor: TensorStats}   (mergeable statistics)
    compute_ranges(stats, method, **options) -> {tensor: (rmin, rmax)}
    write_table(ranges, path, fmt=None) / read_table(path, fmt=None)   (JSON, text,
        onnxruntime's TensorRT FlatBuffers)

Statistics (:mod:`.stats`) are updated per batch and merge exactly: collect on several
shards (or processes; they pickle), ``merge_all`` them, then ``compute_ranges``.
"""

from systolic_sdk.calibration.collect import calibrate, collect
from systolic_sdk.calibration.methods import METHODS, CalibrationError, compute_ranges
from systolic_sdk.calibration.preprocess import PREPROCESSORS, register_preprocessor
from systolic_sdk.calibration.reader import ArrayReader, CalibrationDataReader
from systolic_sdk.calibration.session import calibratable_tensors
from systolic_sdk.calibration.sources import DataSourceError, open_source
from systolic_sdk.calibration.stats import HistogramStats, MinMaxStats, TensorStats, merge_all
from systolic_sdk.calibration.table import read_table, write_table

__all__ = [
    "METHODS",
    "PREPROCESSORS",
    "ArrayReader",
    "CalibrationDataReader",
    "CalibrationError",
    "DataSourceError",
    "HistogramStats",
    "MinMaxStats",
    "TensorStats",
    "calibratable_tensors",
    "calibrate",
    "collect",
    "compute_ranges",
    "merge_all",
    "open_source",
    "read_table",
    "register_preprocessor",
    "write_table",
]
