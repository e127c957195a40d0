"""probe_session: intermediate tensors of a fake-quantized model are the model's own."""

from __future__ import annotations

import numpy as np
from onnx import helper

from systolic_sdk.transforms._graph import probe_session
from tests.transforms.builders import init, model_of


def _qdq_conv_model(w: np.ndarray, s_x: float, s_y: float):
    """x -> Q/DQ(s_x) -> Conv(w, float, off any int8 grid) -> Q/DQ(s_y) -> y."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "sy", "z"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "sy", "z"], ["y"]),
    ]
    inits = [init("w", w), init("b", np.array([0.013, -0.021], np.float32))]
    inits += [init("sx", np.array(s_x)), init("sy", np.array(s_y))]
    inits.append(helper.make_tensor("z", 3, [], [0]))  # int8 zero point
    return model_of(nodes, inits, [1, 3, 4, 4], [1, 2, 4, 4])


def test_fake_quantized_conv_keeps_its_float_weights() -> None:
    """onnxruntime's optimizer would put the float weight between DQ and Q on its own
    int8 grid; the probe must compute the conv with the weight as given."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 3, 1, 1)).astype(np.float32) * np.array(
        [1.0, 0.01, 0.3], np.float32
    ).reshape(1, 3, 1, 1)
    x = rng.uniform(-1, 1, (1, 3, 4, 4)).astype(np.float32)
    s_x, s_y = 1.0 / 127, 0.02
    model = _qdq_conv_model(w, s_x, s_y)
    sess = probe_session(model, ["c"], "test")
    c, y = sess.run(["c", "y"], {"x": x})
    xd = np.clip(np.round(x / np.float32(s_x)), -128, 127).astype(np.float32) * np.float32(s_x)
    want = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), xd.astype(np.float64))
    want += np.array([0.013, -0.021]).reshape(1, 2, 1, 1)
    np.testing.assert_allclose(c, want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(
        y, np.clip(np.round(c / np.float32(s_y)), -128, 127) * np.float32(s_y)
    )
