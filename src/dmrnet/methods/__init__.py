"""Methods: DMRNet and the baselines, all behind one interface (see methods/base.py)."""

from dmrnet.methods import (  # noqa: F401  (registration)
    dedicated,
    dense,
    dmrnet,
    hemis,
    late_fusion,
    mmanet,
    moddrop,
    shaspec,
    surf,
)
from dmrnet.methods.base import (
    METHODS,
    EncoderFusionMethod,
    EncoderHeadMethod,
    LossOutput,
    Method,
    MethodOutput,
    build_method,
)

__all__ = [
    "METHODS",
    "EncoderFusionMethod",
    "EncoderHeadMethod",
    "LossOutput",
    "Method",
    "MethodOutput",
    "build_method",
]
