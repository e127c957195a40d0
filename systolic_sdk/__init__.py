"""systolic-sdk: quantize ONNX models for CPU onnxruntime and the Systolic accelerator."""

__version__ = "0.1.0"
