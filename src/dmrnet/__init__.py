"""dmrnet: robust multimodal learning when modalities go missing (DMRNet, ECCV 2024)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dmrnet.api import Prediction, Predictor, load


def __getattr__(name: str) -> Any:
    # Lazy: importing dmrnet (and `dmrnet --help`) should not pay for importing Lightning.
    if name in ("Prediction", "Predictor", "load"):
        from dmrnet import api

        return getattr(api, name)
    raise AttributeError(f"module 'dmrnet' has no attribute {name!r}")


__all__ = ["Prediction", "Predictor", "__version__", "load"]
