"""Tensor decomposition of Conv2D layers (Tucker-2), AMCT's auto_decomposition workflow."""
