"""Import every kernel module so that each registers its ops."""

from runtime_emulator.kernels import (  # noqa: F401
    max_pool,
    qlinear_add,
    qlinear_conv,
    qlinear_conv_nhwc,
    qlinear_matmul,
    qlinear_relu,
    quantize_linear,
)
