"""Quantization numerics: specs and the TF ops that carry them out."""
