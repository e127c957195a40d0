"""Fake-quant Q/DQ pairs -> float model + tensor overrides."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime_emulator.datapath import dequantize_linear, quantize_linear
from systolic_sdk.errors import SdkError
from systolic_sdk.quantization.qat import has_fake_quant, strip_fake_quant
from systolic_sdk.quantization.types import QuantType


def _qdq(model: onnx.ModelProto, tensor: str, scale, zp, axis: int | None = None) -> None:
    """Insert QuantizeLinear -> DequantizeLinear on ``tensor`` (consumers read the DQ output)."""
    g = model.graph
    s = numpy_helper.from_array(np.asarray(scale, np.float32), f"{tensor}_s")
    z = numpy_helper.from_array(np.asarray(zp), f"{tensor}_z")
    g.initializer.extend([s, z])
    extra = {} if axis is None else {"axis": axis}
    q = helper.make_node(
        "QuantizeLinear", [tensor, s.name, z.name], [f"{tensor}_q"], name=f"{tensor}_Q", **extra
    )
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{tensor}_q", s.name, z.name],
        [f"{tensor}_dq"],
        name=f"{tensor}_DQ",
        **extra,
    )
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == tensor:
                node.input[k] = dq.output[0]
    nodes = list(g.node)
    producer = next((i for i, n in enumerate(nodes) if tensor in n.output), -1)
    nodes[producer + 1 : producer + 1] = [q, dq]
    del g.node[:]
    g.node.extend(nodes)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_pairs_become_overrides_and_graph_is_restored(make_tiny_model, tiny_calib):
    model = make_tiny_model()
    _qdq(model, "x", 0.01, np.uint8(128))
    _qdq(model, "w", [0.02, 0.03, 0.04, 0.05], np.zeros(4, np.int8), axis=0)
    _qdq(model, "r", 0.05, np.uint8(0))  # after a Relu: no clamp needed
    assert has_fake_quant(model)
    st = strip_fake_quant(model)
    onnx.checker.check_model(st.model, full_check=True)
    assert not has_fake_quant(st.model)
    assert [n.op_type for n in st.model.graph.node] == ["Conv", "Relu", "Flatten", "MatMul"]
    assert st.pairs == 3 and st.dequantized == 0
    ov = st.overrides
    assert ov["x"].scale == (float(np.float32(0.01)),) and ov["x"].zero_point == (128,)
    assert ov["x"].quant_type is QuantType.QUInt8 and ov["x"].axis is None
    assert ov["w"].scale == tuple(float(v) for v in np.float32([0.02, 0.03, 0.04, 0.05]))
    assert ov["w"].axis == 0 and ov["w"].quant_type is QuantType.QInt8
    # "r" fed only the pair: the Relu now writes the pair's output name, which carries it
    assert ov["r_dq"].zero_point == (0,) and "r" not in ov
    assert st.model.graph.node[1].output[0] == "r_dq"
    ref = make_tiny_model()
    np.testing.assert_array_equal(_run(st.model, tiny_calib), _run(ref, tiny_calib))


def test_constant_weight_dequantized_exactly(make_tiny_model):
    model = make_tiny_model()
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    scale = np.float32(np.abs(w).max() / 127)
    wq = quantize_linear(w, scale, 0, np.int8)
    g = model.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(wq, "w_q"),
            numpy_helper.from_array(np.asarray(scale), "w_s"),
            numpy_helper.from_array(np.int8(0), "w_z"),
        ]
    )
    g.node.insert(
        0, helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"], name="w_DQ")
    )
    g.node[1].input[1] = "w_dq"
    st = strip_fake_quant(model)
    onnx.checker.check_model(st.model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in st.model.graph.initializer}
    assert "w_q" not in inits and "w_s" not in inits
    np.testing.assert_array_equal(inits["w_dq"], dequantize_linear(wq, scale, 0))
    assert st.overrides["w_dq"].scale == (float(scale),) and st.dequantized == 1


def test_removed_relu_is_restored_as_clip(make_tiny_model, tiny_calib):
    """A pair with zero point at the type minimum on a Conv output clamps like a Relu."""
    model = make_tiny_model()
    g = model.graph
    relu = next(n for n in g.node if n.op_type == "Relu")
    g.node.remove(relu)
    for n in g.node:
        n.input[:] = ["c" if i == "r" else i for i in n.input]
    _qdq(model, "c", 0.05, np.int8(-128))
    st = strip_fake_quant(model)
    ops = [n.op_type for n in st.model.graph.node]
    assert ops == ["Conv", "Clip", "Flatten", "MatMul"]
    clip_out = st.model.graph.node[1].output[0]
    assert st.overrides[clip_out] == st.overrides["c"]
    # Float semantics: Clip(c, 0, 255 * s), the pair's saturation range.
    ref = _run(model, tiny_calib)
    got = _run(st.model, tiny_calib)
    np.testing.assert_allclose(got, ref, atol=0.1)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ("lonely_q", "QuantizeLinear without a DequantizeLinear partner"),
        ("dq_on_activation", "is neither a QuantizeLinear output nor a constant"),
        ("mismatch", "differ from those of its QuantizeLinear"),
        ("q_feeds_other", "also feeds"),
    ],
)
def test_not_fake_quant_is_refused(make_tiny_model, edit, needle):
    model = make_tiny_model()
    g = model.graph
    g.initializer.extend(
        [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(3), "z")]
    )
    g.initializer.append(numpy_helper.from_array(np.float32(0.2), "s2"))
    if edit == "lonely_q":
        g.node.append(helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="Qy"))
        g.output.append(helper.make_tensor_value_info("yq", TensorProto.UINT8, None))
    elif edit == "dq_on_activation":
        g.node.append(helper.make_node("DequantizeLinear", ["y", "s", "z"], ["ydq"], name="DQy"))
    elif edit == "mismatch":
        g.node.append(helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="Qy"))
        g.node.append(helper.make_node("DequantizeLinear", ["yq", "s2", "z"], ["ydq"], name="DQy"))
    else:
        g.node.append(helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="Qy"))
        g.node.append(helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["ydq"], name="DQy"))
        g.node.append(helper.make_node("Identity", ["yq"], ["yid"], name="other"))
    with pytest.raises(SdkError, match=needle):
        strip_fake_quant(model)


def test_onnxruntime_qdq_model_round_trips(digits_model_path, digits_calib, digits_test, tmp_path):
    """ORT's own QDQ output (Relu/Clip removed, int8 weights) strips to an fp32-accurate model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.split(digits_calib, 10))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    out = tmp_path / "ort_qdq.onnx"
    quantize_static(str(digits_model_path), str(out), Reader(), quant_format=QuantFormat.QDQ)
    st = strip_fake_quant(onnx.load(str(out)))
    onnx.checker.check_model(st.model, full_check=True)
    ops = {n.op_type for n in st.model.graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    x, labels = digits_test
    fp32 = ort.InferenceSession(str(digits_model_path), providers=["CPUExecutionProvider"])
    stripped = ort.InferenceSession(
        st.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    acc_fp32 = (fp32.run(None, {"input": x})[0].argmax(1) == labels).mean()
    acc = (stripped.run(None, {"input": x})[0].argmax(1) == labels).mean()
    assert abs(acc - acc_fp32) <= 0.01
    weights = {
        t.name
        for t in onnx.load(str(digits_model_path)).graph.initializer
        if t.name.endswith("weight")
    }
    assert all(any(k.startswith(w) for k in st.overrides) for w in weights)
