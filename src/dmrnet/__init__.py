"""dmrnet: robust multimodal learning when modalities go missing (DMRNet, ECCV 2024).

The Python API (docs/python-api.md): `train`, `evaluate`, `load` (-> `Predictor.predict`),
`load_config`; and to bring your own Lightning Trainer, `DataModule`, `build_module` and the
LightningModule `LitMethod`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dmrnet.api import Prediction, Predictor, load
    from dmrnet.config import Config, load_config
    from dmrnet.datamodule import DataModule, build_module
    from dmrnet.engine import LitMethod
    from dmrnet.evaluate import EvaluationReport
    from dmrnet.workflow import evaluate, train

# Lazy: importing dmrnet (and `dmrnet --help`) should not pay for importing Lightning.
_EXPORTS = {
    "Config": "dmrnet.config",
    "DataModule": "dmrnet.datamodule",
    "EvaluationReport": "dmrnet.evaluate",
    "LitMethod": "dmrnet.engine",
    "Prediction": "dmrnet.api",
    "Predictor": "dmrnet.api",
    "build_module": "dmrnet.datamodule",
    "evaluate": "dmrnet.workflow",
    "load": "dmrnet.api",
    "load_config": "dmrnet.config",
    "train": "dmrnet.workflow",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dmrnet' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package: `dmrnet.evaluate` would
    turn from the API function into the module dmrnet/evaluate.py. An exported name keeps
    meaning the export (`from dmrnet.evaluate import ...` still finds the module)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "Config",
    "DataModule",
    "EvaluationReport",
    "LitMethod",
    "Prediction",
    "Predictor",
    "__version__",
    "build_module",
    "evaluate",
    "load",
    "load_config",
    "train",
]
