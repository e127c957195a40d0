"""fp32 graph transforms run before quantization: cross-layer equalization, bias correction,
int8 weights chosen on calibration data (GPTQ rounding) snapped onto their per-tensor grid."""

from systolic_sdk.transforms.bias_correction import correct_bias, fake_quantize_per_tensor
from systolic_sdk.transforms.equalization import equalize
from systolic_sdk.transforms.recipe import per_tensor_recipe
from systolic_sdk.transforms.weight_rounding import round_weights

__all__ = [
    "correct_bias",
    "equalize",
    "fake_quantize_per_tensor",
    "per_tensor_recipe",
    "round_weights",
]
