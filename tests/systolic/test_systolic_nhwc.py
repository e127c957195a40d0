"""The NHWC variant of the systolic backend (SystolicLayout=nhwc) and the gemmini-ort op
flavour (SystolicOpsDomain=gemmini-ort): graph form, fusion rules, exactness."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from systolic_helpers import initializers, nodes_of, quantize_systolic, relu_attr, run_ort

from runtime_emulator.kernels import SYSTOLIC_DOMAIN
from systolic_sdk.backends import get_backend
from systolic_sdk.backends.systolic.layout import remove_cancelling_transposes
from systolic_sdk.errors import QuantizationError

F32 = np.float32
RNG = np.random.default_rng(11)
NHWC = {"SystolicLayout": "nhwc"}
GEMMINI = {"SystolicLayout": "nhwc", "SystolicOpsDomain": "gemmini-ort"}
CONV_INPUTS = 9  # x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _perm(node: onnx.NodeProto) -> list[int]:
    return list(_attrs(node)["perm"])


def _quantize(model: onnx.ModelProto, feeds: dict, options: dict) -> onnx.ModelProto:
    return quantize_systolic(model, feeds, extra_options=options)


def _cancelling_pairs(model: onnx.ModelProto) -> int:
    producer = {o: n for n in model.graph.node for o in n.output}
    count = 0
    for n in nodes_of(model, "Transpose"):
        prev = producer.get(n.input[0])
        if prev is not None and prev.op_type == "Transpose":
            p1, p2 = _perm(prev), _perm(n)
            count += [p1[k] for k in p2] == list(range(len(p1)))
    return count


# -- the shipped model --------------------------------------------------------------


@pytest.fixture(scope="module")
def nchw(digits_model, digits_calib) -> onnx.ModelProto:
    return quantize_systolic(digits_model, {"input": digits_calib})


@pytest.fixture(scope="module")
def nhwc(digits_model, digits_calib) -> onnx.ModelProto:
    return _quantize(digits_model, {"input": digits_calib}, NHWC)


@pytest.fixture(scope="module")
def outputs(nchw, nhwc, digits_test) -> tuple[np.ndarray, np.ndarray]:
    x, _ = digits_test
    backend = get_backend("systolic")
    return backend.run(nchw, {"input": x})[0], backend.run(nhwc, {"input": x})[0]


def test_digits_nhwc_graph_form(nchw, nhwc) -> None:
    assert not nodes_of(nhwc, "QLinearConv")
    convs = nodes_of(nhwc, "QLinearConv_nhwc")
    ref = nodes_of(nchw, "QLinearConv")
    assert len(convs) == len(ref) == 6
    assert {n.domain for n in convs} == {SYSTOLIC_DOMAIN}
    assert any(o.domain == SYSTOLIC_DOMAIN for o in nhwc.opset_import)
    onnx.checker.check_model(
        _without(nhwc, "relu", "maxpool", "pool_kernel_shape", "pool_pads", "pool_strides"),
        full_check=True,
    )
    w_nhwc, w_nchw = initializers(nhwc), initializers(nchw)
    for new, old in zip(convs, ref, strict=True):
        assert new.name == old.name and len(new.input) == len(old.input) == CONV_INPUTS
        assert list(new.input[1:3]) == list(old.input[1:3])
        assert list(new.input[4:]) == list(old.input[4:])
        hwio, oihw = w_nhwc[new.input[3]], w_nchw[old.input[3]]
        assert hwio.dtype == np.int8
        assert np.array_equal(hwio, oihw.transpose(2, 3, 1, 0))
        assert relu_attr(new) == relu_attr(old)
        for key in ("pads", "strides", "group", "dilations", "kernel_shape"):
            assert _attrs(new).get(key) == _attrs(old).get(key)
    conv1 = convs[0]
    assert conv1.name == "/conv1/Conv"
    a = _attrs(conv1)
    assert (a["relu"], a["maxpool"], a["pool_kernel_shape"]) == (1, 1, [2, 2])
    assert (a["pool_pads"], a["pool_strides"]) == ([0, 0, 0, 0], [2, 2])
    assert [int(_attrs(c).get("maxpool", 0)) for c in convs] == [1, 0, 0, 0, 0, 0]
    # pool1 fused; pool2 follows the QLinearAdd (not a conv): NCHW with transposes around
    assert len(nodes_of(nhwc, "MaxPool")) == len(nodes_of(nchw, "MaxPool")) - 1 == 1


def _without(model: onnx.ModelProto, *names: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        kept = [a for a in n.attribute if a.name not in names]
        del n.attribute[:]
        n.attribute.extend(kept)
    return out


def test_digits_nhwc_transposes_only_at_nchw_boundaries(nhwc) -> None:
    transposes = nodes_of(nhwc, "Transpose")
    # input -> conv1; QLinearAdd -> MaxPool -> dw_conv; dw_conv -> Flatten; the two
    # Gemm-as-1x1-conv nodes between Reshapes (in and out each)
    assert len(transposes) == 8
    assert _cancelling_pairs(nhwc) == 0
    producer = {o: n for n in nhwc.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nhwc.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    nhwc_ops = {"QLinearConv_nhwc", "QLinearAdd", "QLinearRelu"}
    for t in transposes:
        if _perm(t) == [0, 3, 1, 2]:  # back to NCHW: from an NHWC op to NCHW readers
            assert producer[t.input[0]].op_type in nhwc_ops
            assert all(r.op_type not in nhwc_ops for r in readers[t.output[0]])
        else:
            assert _perm(t) == [0, 2, 3, 1]
            assert producer[t.input[0]].op_type not in nhwc_ops
            assert {r.op_type for r in readers[t.output[0]]} == {"QLinearConv_nhwc"}


def test_digits_nhwc_bit_identical_to_nchw(digits_test, outputs) -> None:
    y_nchw, y_nhwc = outputs
    _, labels = digits_test
    assert y_nchw.dtype == y_nhwc.dtype and np.array_equal(y_nchw, y_nhwc)
    acc = float((y_nhwc.argmax(1) == labels).mean())
    assert acc == float((y_nchw.argmax(1) == labels).mean())
    assert acc >= 0.97


def test_digits_nhwc_lowering_equals_onnxruntime(nhwc, digits_test, outputs) -> None:
    lowered = get_backend("systolic").lower(nhwc)
    assert not any(n.domain for n in lowered.graph.node)
    assert not nodes_of(lowered, "QLinearConv_nhwc") and not nodes_of(lowered, "Pad")
    onnx.checker.check_model(lowered, full_check=True)
    x, _ = digits_test
    (y,) = run_ort(lowered, {"input": x})
    assert y.dtype == outputs[1].dtype and np.array_equal(y, outputs[1])


def test_digits_gemmini_ort_flavour(digits_model, digits_calib, digits_test, nhwc, outputs):
    q = _quantize(digits_model, {"input": digits_calib}, GEMMINI)
    convs = nodes_of(q, "QLinearConv_nhwc")
    assert len(convs) == 6 and {n.domain for n in convs} == {""}
    assert not any(o.domain == SYSTOLIC_DOMAIN for o in q.opset_import)
    assert {n.domain for n in nodes_of(q, "QLinearAdd")} == {"com.microsoft"}
    for a, b in zip(convs, nodes_of(nhwc, "QLinearConv_nhwc"), strict=True):
        assert list(a.input) == list(b.input) and _attrs(a) == _attrs(b)
    x, _ = digits_test
    (y,) = get_backend("systolic").run(q, {"input": x[:200]})
    assert np.array_equal(y, outputs[1][:200])
    (yl,) = run_ort(get_backend("systolic").lower(q), {"input": x[:200]})
    assert np.array_equal(yl, y)


@pytest.mark.parametrize("options", [{"SystolicOpsDomain": "gemmini-ort"}, NHWC, GEMMINI])
def test_unfused_qlinear_relu_and_add(options: dict) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu_shared"),
        helper.make_node("Add", ["c", "r"], ["y"], name="add"),
    ]
    model = _model(nodes, [6, 6], [("y", [3, 6, 6])], _conv_inits())
    feeds = _feeds()
    q = _quantize(model, feeds, options)
    domain = "" if options.get("SystolicOpsDomain") == "gemmini-ort" else SYSTOLIC_DOMAIN
    (relu,) = nodes_of(q, "QLinearRelu")
    assert relu.domain == domain
    conv_type = "QLinearConv_nhwc" if options.get("SystolicLayout") == "nhwc" else "QLinearConv"
    assert [n.domain for n in nodes_of(q, conv_type)] == [
        "" if conv_type == "QLinearConv" else domain
    ]
    if conv_type == "QLinearConv_nhwc":  # ReLU and Add pass NHWC through
        assert [_perm(t) for t in nodes_of(q, "Transpose")] == [[0, 2, 3, 1], [0, 3, 1, 2]]
    (y,) = _assert_bit_exact(q, feeds)
    assert np.array_equal(y, get_backend("systolic").run(quantize_systolic(model, feeds), feeds)[0])


def test_bad_option_values_are_refused() -> None:
    model = _model([_conv_node("y")], [6, 6], [("y", [3, 6, 6])], _conv_inits())
    for options in ({"SystolicLayout": "nchwc"}, {"SystolicOpsDomain": "ai.onnx"}):
        with pytest.raises(QuantizationError, match=next(iter(options))):
            _quantize(model, _feeds(), options)


# -- hand-built graphs --------------------------------------------------------------


def _model(nodes, hw, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, *hw])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *s]) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv_inits() -> dict:
    return {
        "w": RNG.normal(0, 0.6, (3, 2, 3, 3)).astype(F32),
        "b": RNG.normal(0, 0.2, (3,)).astype(F32),
    }


def _conv_node(out: str = "c") -> onnx.NodeProto:
    return helper.make_node("Conv", ["x", "w", "b"], [out], name="conv", pads=[1, 1, 1, 1])


def _feeds(hw=(6, 6), n: int = 32) -> dict:
    return {"x": RNG.normal(0, 1.0, (n, 2, *hw)).astype(F32)}


def _assert_bit_exact(q: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    backend = get_backend("systolic")
    emulated, lowered = backend.run(q, feeds), run_ort(backend.lower(q), feeds)
    for a, b in zip(emulated, lowered, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    return emulated


def _both(model: onnx.ModelProto, feeds: dict) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    nchw = quantize_systolic(model, feeds)
    nhwc = _quantize(model, feeds, NHWC)
    return nchw, nhwc


def _pool(kind: str = "MaxPool", **attrs) -> onnx.NodeProto:
    fields = {"kernel_shape": [2, 2], "strides": [2, 2], **attrs}
    return helper.make_node(kind, ["c"], ["p"], name="pool", **fields)


def test_remove_cancelling_transposes() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),  # cancels t1
        helper.make_node("Relu", ["t2"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t3"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t3"], ["t4"], perm=[0, 2, 3, 1]),  # does not cancel
        helper.make_node("Transpose", ["t4"], ["y"], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = RNG.normal(0, 1, (1, 2, 3, 4)).astype(F32)
    (before,) = run_ort(model, {"x": x})
    out = remove_cancelling_transposes(model)
    kinds = [(n.op_type, list(n.input), n.output[0]) for n in out.graph.node]
    assert kinds[0] == ("Relu", ["x"], "r")
    # t3 -> t4 -> y: t4 then y composes to [0,2,3,1]-then-[0,3,1,2]: cancels, y kept
    assert len(nodes_of(out, "Transpose")) == 3 and _cancelling_pairs(out) == 1
    (after,) = run_ort(out, {"x": x})
    assert np.array_equal(before, after)


def test_maxpool_fused_when_eligible_and_bit_identical_to_nchw() -> None:
    relu = helper.make_node("Relu", ["c0"], ["c"], name="relu")
    model = _model([_conv_node("c0"), relu, _pool()], [6, 6], [("p", [3, 3, 3])], _conv_inits())
    feeds = _feeds()
    nchw, nhwc = _both(model, feeds)
    (conv,) = nodes_of(nhwc, "QLinearConv_nhwc")
    assert _attrs(conv)["maxpool"] == 1 and relu_attr(conv) == 1
    assert not nodes_of(nhwc, "MaxPool") and len(nodes_of(nhwc, "Transpose")) == 2
    y = _assert_bit_exact(nhwc, feeds)
    assert np.array_equal(y[0], get_backend("systolic").run(nchw, feeds)[0])


@pytest.mark.parametrize("case", ["shared", "ceil_mode"])
def test_maxpool_not_fused_when_ineligible(case: str) -> None:
    if case == "shared":  # the conv output has a second consumer
        nodes = [_conv_node(), _pool(), helper.make_node("Relu", ["c"], ["r"], name="relu")]
        outs = [("p", [3, 3, 3]), ("r", [3, 6, 6])]
    else:
        nodes = [_conv_node(), _pool(ceil_mode=1, kernel_shape=[3, 3])]
        outs = [("p", [3, 3, 3])]
    model = _model(nodes, [6, 6], outs, _conv_inits())
    feeds = _feeds()
    nchw, nhwc = _both(model, feeds)
    (conv,) = nodes_of(nhwc, "QLinearConv_nhwc")
    assert "maxpool" not in _attrs(conv)
    (pool,) = nodes_of(nhwc, "MaxPool")
    producer = {o: n for n in nhwc.graph.node for o in n.output}
    assert producer[pool.input[0]].op_type == "Transpose"  # the pool stays NCHW
    assert _cancelling_pairs(nhwc) == 0
    ys = _assert_bit_exact(nhwc, feeds)
    for a, b in zip(ys, get_backend("systolic").run(nchw, feeds), strict=True):
        assert np.array_equal(a, b)


def test_fused_pool_padding_counts_as_zero_on_the_accelerator_path() -> None:
    pool = _pool(kernel_shape=[3, 3], pads=[1, 1, 1, 1])  # no ReLU: negative outputs
    model = _model([_conv_node(), pool], [6, 6], [("p", [3, 3, 3])], _conv_inits())
    feeds = _feeds(n=64)
    nchw, nhwc = _both(model, feeds)
    assert _attrs(nodes_of(nhwc, "QLinearConv_nhwc")[0])["pool_pads"] == [1, 1, 1, 1]
    lowered = get_backend("systolic").lower(nhwc)
    (pad,) = nodes_of(lowered, "Pad")
    assert _attrs(nodes_of(lowered, "MaxPool")[0])["pads"] == [0, 0, 0, 0]
    assert initializers(lowered)[pad.input[2]] == 0
    (y,) = _assert_bit_exact(nhwc, feeds)
    (ref,) = get_backend("systolic").run(nchw, feeds)  # ONNX rule: padding excluded
    border = y != ref
    assert border.any() and np.all(ref[border] < 0) and np.all(y[border] == 0)
    assert np.array_equal(y[..., 1, 1], ref[..., 1, 1])  # interior windows agree


def test_fused_pool_on_the_fallback_path_excludes_padding() -> None:
    pool = _pool(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = _model([_conv_node(), pool], [6, 8], [("p", [3, 3, 4])], _conv_inits())
    feeds = _feeds(hw=(6, 8))  # a non-square input: the runtime's fallback path
    nchw, nhwc = _both(model, feeds)
    assert _attrs(nodes_of(nhwc, "QLinearConv_nhwc")[0])["maxpool"] == 1
    assert not nodes_of(get_backend("systolic").lower(nhwc), "Pad")
    (y,) = _assert_bit_exact(nhwc, feeds)
    assert np.array_equal(y, get_backend("systolic").run(nchw, feeds)[0])


@pytest.mark.parametrize(
    ("hw", "conv_pads", "stride", "pool_kernel", "pool_pads", "pool_stride", "relu"),
    [
        ((7, 7), [1, 1, 1, 1], 1, 3, [1, 1, 1, 1], 2, False),
        ((7, 7), [1, 1, 1, 1], 1, 3, [1, 1, 1, 1], 2, True),
        ((8, 8), [0, 0, 0, 0], 1, 2, [1, 1, 0, 0], 1, False),  # runtime: pads [1]*4
        ((8, 8), [2, 2, 2, 2], 2, 3, [2, 2, 2, 2], 3, False),
        ((8, 8), [1, 0, 1, 0], 1, 2, [1, 1, 1, 1], 2, False),  # fallback: unequal pads
        ((5, 9), [1, 1, 1, 1], 1, 2, [0, 1, 0, 1], 2, False),  # fallback: non-square
    ],
)
def test_fused_pool_geometries_bit_exact(
    hw, conv_pads, stride, pool_kernel, pool_pads, pool_stride, relu
):
    conv = helper.make_node(
        "Conv",
        ["x", "w", "b"],
        ["c0" if relu else "c"],
        name="conv",
        pads=conv_pads,
        strides=[stride, stride],
    )
    nodes = [conv] + ([helper.make_node("Relu", ["c0"], ["c"], name="relu")] if relu else [])
    nodes.append(_pool(kernel_shape=[pool_kernel] * 2, pads=pool_pads, strides=[pool_stride] * 2))
    model = _model(nodes, list(hw), [("p", ["C", "H", "W"])], _conv_inits())
    feeds = _feeds(hw=hw)
    q = _quantize(model, feeds, NHWC)
    (node,) = nodes_of(q, "QLinearConv_nhwc")
    assert _attrs(node)["maxpool"] == 1 and relu_attr(node) == int(relu)
    # the accelerator path without a ReLU pads with zeros explicitly
    accelerator = len(set(conv_pads)) == 1 and hw[0] == hw[1]
    expect_pad = accelerator and not relu and pool_pads[0] > 0
    assert bool(nodes_of(get_backend("systolic").lower(q), "Pad")) == expect_pad
    _assert_bit_exact(q, feeds)


def test_systolic_options_raise_no_unsupported_option_warning(digits_model, digits_calib) -> None:
    """The backend declares the extra options it reads; the core does not call them ignored."""

    options = {"SystolicLayout": "nhwc", "SystolicOpsDomain": "gemmini-ort"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_systolic(digits_model, {"input": digits_calib}, extra_options=options)
    assert not [w for w in caught if "not supported by the quantizer" in str(w.message)]


def test_digits_nhwc_lowering_keeps_no_unused_initializers(nhwc) -> None:
    """The lowered graph drops the HWIO weights its standard QLinearConvs no longer read."""

    lowered = get_backend("systolic").lower(nhwc)
    read = {i for n in lowered.graph.node for i in n.input}
    assert [t.name for t in lowered.graph.initializer if t.name not in read] == []
