"""The layer catalogue: which ops carry weights, and how their weights relate to channels."""

from qat_rewrite.layers.catalogue import (  # noqa: F401
    ACTIVATION_TYPES, ADD_TYPES, LAYER_KINDS, PASS_THROUGH_TYPES, LayerKind, kind_of)
