"""Drop-in replacement for Xilinx `decent_q`: `from qat_rewrite import decent_q`.

So far: `QuantizeConfig`. The graph functions (CreateQuantizeTrainingGraph, ...) follow.
"""

from qat_rewrite.decent_q.config import QuantizeConfig  # noqa: F401
