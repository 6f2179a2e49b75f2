"""The rewrite passes: checks, batch-norm folding, quantizer insertion."""
