"""Drop-in replacement for Huawei AMCT (TensorFlow): `from qat_rewrite import amct`."""

from qat_rewrite.amct.api import (create_quant_config, create_quant_retrain_config,  # noqa: F401
                                  create_quant_retrain_model, quantize_model, save_model,
                                  save_quant_retrain_model, set_logging_level)
from qat_rewrite.amct.tensor_decompose import auto_decomposition, decompose_graph  # noqa: F401
