"""Methods: DMRNet and the baselines, all behind one interface (see methods/base.py)."""

from dmrnet.methods import (  # noqa: F401  (registration)
    dedicated,
    dmrnet,
    hemis,
    late_fusion,
    mmanet,
    moddrop,
    segmentation,
    shaspec,
    surf,
)
from dmrnet.methods.base import (
    METHODS,
    EncoderFusionMethod,
    LossOutput,
    Method,
    MethodOutput,
    build_method,
)

__all__ = [
    "METHODS",
    "EncoderFusionMethod",
    "LossOutput",
    "Method",
    "MethodOutput",
    "build_method",
]
