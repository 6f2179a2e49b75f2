"""qat_rewrite: quantization-aware training rewrites for tf.compat.v1 graphs."""

__version__ = "0.1.0"
