"""Drop-in replacement for Xilinx `decent_q`: `from qat_rewrite import decent_q`."""

from qat_rewrite.decent_q.api import (CreateQuantizeDeployGraph,  # noqa: F401
                                      CreateQuantizeEvaluationGraph, CreateQuantizeTrainingGraph,
                                      quantize_frozen)
from qat_rewrite.decent_q.config import QuantizeConfig  # noqa: F401
