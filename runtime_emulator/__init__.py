"""Bit-exact emulator of the Systolic int8 datapath and a quantized-graph executor."""

__all__: list[str] = []
