"""Methods: DMRNet and the baselines, all behind one interface (see methods/base.py).

Importing this package imports every module in it, and each registers its methods: adding a method
is adding its module, nothing else in the package changes.
"""

import importlib
import pkgutil

from dmrnet.methods.base import (
    METHODS,
    EncoderFusionMethod,
    EncoderHeadMethod,
    LossOutput,
    Method,
    MethodOutput,
    build_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "EncoderFusionMethod",
    "EncoderHeadMethod",
    "LossOutput",
    "Method",
    "MethodOutput",
    "build_method",
]
