"""Quantization reports: per-layer SQNR against fp32, activation histograms with their
clip ranges, accumulator ranges, array cycles, bit-exactness, as JSON and as one
self-contained HTML page."""

from __future__ import annotations

from systolic_sdk.report.build import SCHEMA, build_report
from systolic_sdk.report.html import render_html, to_json

__all__ = ["SCHEMA", "build_report", "render_html", "to_json"]
