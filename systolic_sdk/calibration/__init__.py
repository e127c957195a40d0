"""Calibration: data sources, statistics and activation ranges."""

from systolic_sdk.calibration.reader import ArrayReader, CalibrationDataReader

__all__ = ["ArrayReader", "CalibrationDataReader"]
