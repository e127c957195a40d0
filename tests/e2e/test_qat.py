"""quantize_qat on the shipped model: fake-quant pairs from our quantizer and onnxruntime's."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from systolic_sdk import QuantFormat, QuantType, quantize_qat, quantize_static

from .conftest import TOLERANCE, check_written


def _initializer_values(model: onnx.ModelProto) -> list[list[np.ndarray]]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [[inits[i] for i in n.input if i in inits] for n in model.graph.node]


def _float_weights_with_pairs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn each int8 weight -> DequantizeLinear into float weight -> Q -> DQ (a QAT export)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for node in g.node:
        src = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if src is not None and src.data_type == onnx.TensorProto.INT8:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis = attrs.get("axis", 1)
            scale = numpy_helper.to_array(inits[node.input[1]])
            zp = numpy_helper.to_array(inits[node.input[2]])
            q = numpy_helper.to_array(src).astype(np.float32)
            shape = [1] * q.ndim
            if scale.size > 1:
                shape[axis] = scale.size
            w = (q - zp.astype(np.float32).reshape(shape)) * scale.reshape(shape)
            g.initializer.remove(src)
            g.initializer.append(numpy_helper.from_array(w.astype(np.float32), src.name))
            nodes.append(
                helper.make_node(
                    "QuantizeLinear", [src.name, *node.input[1:]], [f"{src.name}_fq"],
                    name=f"{src.name}_Q", **({"axis": axis} if scale.size > 1 else {}),
                )
            )  # fmt: skip
            node.input[0] = f"{src.name}_fq"
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return out


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_our_qdq_round_trips_bit_for_bit(per_channel, digits_model_path, calib_reader):
    """QDQ model -> quantize_qat(QDQ) gives back the same nodes and the same integers."""
    first = quantize_static(digits_model_path, None, calib_reader(), per_channel=per_channel)
    again = quantize_qat(first, None, per_channel=per_channel)
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in first.graph.node]
    for a, b in zip(_initializer_values(first), _initializer_values(again), strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("fmt", [QuantFormat.QOperator, QuantFormat.QDQ], ids=str)
def test_fake_quant_export_to_any_format(
    fmt, digits_model_path, calib_reader, tmp_path, score, fp32_accuracy
):
    qdq = quantize_static(
        digits_model_path, None, calib_reader(), per_channel=True, activation_type=QuantType.QUInt8
    )
    fake = _float_weights_with_pairs(qdq)
    kinds = Counter(n.op_type for n in fake.graph.node)
    assert kinds["QuantizeLinear"] > 6  # weights too carry Q -> DQ now
    src = tmp_path / "qat.onnx"
    onnx.save(fake, str(src))
    out = tmp_path / "q.onnx"
    quantize_qat(src, out, quant_format=fmt, per_channel=True)
    model = check_written(out)
    if fmt is QuantFormat.QOperator:
        assert Counter(n.op_type for n in model.graph.node)["QLinearConv"] == 4
    assert abs(score(out) - fp32_accuracy) <= TOLERANCE


def test_onnxruntime_qdq_model(digits_model_path, digits_calib, tmp_path, score, fp32_accuracy):
    """A QDQ model written by onnxruntime's own quantizer (Relu/Clip folded into the pairs)."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.split(digits_calib, 4))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    src = tmp_path / "ort_qdq.onnx"
    ort_quantize_static(str(digits_model_path), str(src), Reader())
    out = tmp_path / "q.onnx"
    quantize_qat(src, out, quant_format=QuantFormat.QOperator)
    check_written(out)
    assert abs(score(out) - fp32_accuracy) <= TOLERANCE
