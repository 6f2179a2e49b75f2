"""Fully-integer TFLite: post-training quantization by the TFLite converter (`ptq`)."""
