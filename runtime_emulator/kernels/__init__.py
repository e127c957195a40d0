"""One module per quantized op."""
