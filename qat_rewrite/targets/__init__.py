"""Deployment targets: what each accelerator's arithmetic requires of the quantized graph."""
