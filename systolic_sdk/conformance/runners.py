"""Built-in backends for ``conformance run``: ``run(model_path, inputs) -> outputs``.

- :func:`emulator`: ``runtime_emulator.run`` (the reference the suite was made with);
- :func:`onnxruntime_lowered`: the Systolic backend's standard-ONNX lowering
  (``get_backend("systolic").lower``) run in stock onnxruntime on the CPU, with graph
  optimizations off and one thread.

``inputs`` are in the order of the model's graph inputs (``input_K.pb``); outputs are
returned in the order of the graph outputs. Use either as
``--backend systolic_sdk.conformance.runners:emulator`` (or the short names
``emulator`` and ``onnxruntime_lowered``).
"""

from __future__ import annotations

import numpy as np
import onnx

from systolic_sdk.graph.io import load_model


def _feeds(model: onnx.ModelProto, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    init = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in init]
    if len(names) != len(inputs):
        raise ValueError(f"the model takes {len(names)} inputs, got {len(inputs)}")
    return dict(zip(names, inputs, strict=True))


def emulator(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the model on the bit-exact Systolic emulator."""
    import runtime_emulator

    model = load_model(model_path)
    outputs = runtime_emulator.run(model, _feeds(model, inputs))
    return [outputs[o.name] for o in model.graph.output]


def onnxruntime_lowered(model_path: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the Systolic backend's standard-ONNX lowering of the model in onnxruntime."""
    import onnxruntime as ort

    from systolic_sdk.backends import get_backend

    model = load_model(model_path)
    lowered = get_backend("systolic").lower(model)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        lowered.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    outputs = sess.run(None, _feeds(lowered, inputs))
    return [np.asarray(o) for o in outputs]


#: Short names accepted by ``--backend``.
BUILTIN = {"emulator": emulator, "onnxruntime_lowered": onnxruntime_lowered}
