"""Methods: DMRNet and the baselines, all behind one interface (see methods/base.py)."""

from dmrnet.methods import dmrnet, moddrop  # noqa: F401  (registration)
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
