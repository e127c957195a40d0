"""Backend-conformance suites for the Systolic datapath.

``generate_suite`` writes single-op cases (ONNX test-data layout plus ``manifest.json``)
aimed at the datapath's corners: .5 ties under several multipliers, saturation, wide and
wrapping accumulators, conv and pool padding, strides, dilations, groups, depthwise, odd
shapes, fused ReLU and max pooling. Each case's tags are proven from its step-wise trace;
expected outputs come from ``runtime_emulator``. ``run_suite`` replays a suite against any
``run(model_path, inputs) -> outputs`` function with zero tolerance.
"""

from systolic_sdk.conformance.generate import ConformanceError, generate_suite
from systolic_sdk.conformance.replay import (
    CaseResult,
    SuiteReport,
    compare_outputs,
    junit_xml,
    load_backend,
    run_suite,
    write_junit,
)
from systolic_sdk.conformance.suite import Suite, SuiteCase, load_suite, select_cases

__all__ = [
    "CaseResult",
    "ConformanceError",
    "Suite",
    "SuiteCase",
    "SuiteReport",
    "compare_outputs",
    "generate_suite",
    "junit_xml",
    "load_backend",
    "load_suite",
    "run_suite",
    "select_cases",
    "write_junit",
]
