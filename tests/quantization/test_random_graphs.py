"""Random DAGs of the supported ops (and float-only ops between them): every form gives a
model that passes the full checker, runs in onnxruntime, has at most one QuantizeLinear
per tensor, and stays close to fp32."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from onnx import helper
from qtest_helpers import make_model, minmax_ranges, run

from systolic_sdk.quantization import OutputForm, QuantConfig, quantize_model, tensors_to_calibrate

C, H = 4, 6
UNARY = ["Conv", "Relu", "Clip", "MaxPool", "AveragePool", "Transpose", "Reshape", "Sigmoid"]
BINARY = ["Add", "Mul", "ConcatConv"]


def random_model(seed: int):
    """A DAG whose tensors all have shape [1, C, H, H]; several graph outputs."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {
        "lo": np.array(-0.5, np.float32),
        "hi": np.array(1.5, np.float32),
        "shape": np.array([1, C, H, H], np.int64),
    }
    tensors = ["x"]
    nodes = []
    for i in range(int(rng.integers(4, 10))):
        out = f"t{i}"
        if rng.random() < 0.3 and len(tensors) > 1:
            op = BINARY[int(rng.integers(len(BINARY)))]
            a, b = (tensors[int(j)] for j in rng.choice(len(tensors), 2, replace=False))
            if op == "ConcatConv":
                inits[f"w{i}"] = (rng.standard_normal((C, 2 * C, 1, 1)) * 0.4).astype("f4")
                nodes.append(
                    helper.make_node("Concat", [a, b], [f"cat{i}"], name=f"cat{i}", axis=1)
                )
                nodes.append(helper.make_node("Conv", [f"cat{i}", f"w{i}"], [out], name=f"n{i}"))
            else:
                nodes.append(helper.make_node(op, [a, b], [out], name=f"n{i}"))
        else:
            op = UNARY[int(rng.integers(len(UNARY)))]
            a = tensors[int(rng.integers(len(tensors)))]
            attrs: dict = {}
            ins = [a]
            if op == "Conv":
                inits[f"w{i}"] = (rng.standard_normal((C, C, 3, 3)) * 0.3).astype("f4")
                inits[f"b{i}"] = (rng.standard_normal(C) * 0.1).astype("f4")
                ins += [f"w{i}", f"b{i}"]
                attrs = {"pads": [1, 1, 1, 1]}
            elif op == "Clip":
                ins += ["lo", "hi"]
            elif op in ("MaxPool", "AveragePool"):
                attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
            elif op == "Transpose":
                attrs = {"perm": [0, 1, 3, 2]}
            elif op == "Reshape":
                ins += ["shape"]
            nodes.append(helper.make_node(op, ins, [out], name=f"n{i}", **attrs))
        tensors.append(out)
    consumed = {i for n in nodes for i in n.input}
    outputs = [t for t in tensors[1:] if t not in consumed] or [tensors[-1]]
    if tensors[-1] not in outputs:
        outputs.append(tensors[-1])
    return make_model(nodes, [("x", [1, C, H, H])], outputs, inits)


FORMS = [
    (OutputForm.QOPERATOR, True),
    (OutputForm.QDQ, True),
    (OutputForm.INTEGER, True),
    (OutputForm.INTEGER, False),
]


@pytest.mark.parametrize("seed", range(30))
def test_random_graph_every_form(seed):
    model = random_model(seed)
    feeds = {"x": np.random.default_rng(100 + seed).standard_normal((1, C, H, H)).astype("f4")}
    ref = run(model, feeds)
    for form, static in FORMS:
        cfg = QuantConfig(form=form, static=static, per_channel=bool(seed % 2))
        names = tensors_to_calibrate(model, cfg)
        ranges = minmax_ranges(model, feeds, names) if names else None
        q = quantize_model(model, cfg, ranges)  # includes the full checker and a session
        quantized = Counter(n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear")
        assert all(v == 1 for v in quantized.values()), quantized
        assert [o.name for o in q.graph.output] == [o.name for o in model.graph.output]
        for r, g in zip(ref, run(q, feeds), strict=True):
            span = float(np.abs(r).max()) or 1.0
            assert float(np.abs(g - r).max()) <= 0.08 * span + 0.01, (form, static, seed)
