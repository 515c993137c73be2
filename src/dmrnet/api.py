"""Python API: load a trained run and predict from any subset of modalities.

model = dmrnet.load("runs/handwritten")
prediction = model.predict({"pix": pix, "kar": kar})  # the other views are missing
prediction.labels, prediction.probabilities, prediction.variance
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmrnet.errors import DataError
from dmrnet.plugins import import_plugins
from dmrnet.runs import load_checkpoint


@dataclass
class Prediction:
    labels: torch.Tensor  # (B,) predicted class
    probabilities: torch.Tensor  # (B, K)
    # (B,) mean embedding variance: larger = less certain (None for deterministic methods)
    variance: torch.Tensor | None
    present: torch.Tensor  # (B, M) the modalities each prediction used


class Predictor:
    """A trained method in evaluation mode, with the run's config and data description."""

    def __init__(self, path: str | Path) -> None:
        loaded = load_checkpoint(path)
        self.method = loaded.method
        self.config = loaded.config
        self.spec = loaded.spec
        self.modalities = loaded.spec.modalities

    @torch.no_grad()
    def predict(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> Prediction:
        """Predict from raw (unstandardized) inputs of any subset of modalities.

        A missing key means that modality is missing for every sample; a sample whose values
        for a modality are all NaN has that modality missing (per-sample missingness).
        """
        names = self.modalities.names
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise DataError(f"unknown modality {unknown[0]!r}; this model knows {'+'.join(names)}")
        if not inputs:
            raise DataError(f"no modality given; this model knows {'+'.join(names)}")
        tensors = {
            k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in inputs.items()
        }
        sizes = {k: v.shape[0] if v.dim() > 0 else 0 for k, v in tensors.items()}
        batch = next(iter(sizes.values()))
        if len(set(sizes.values())) != 1:
            raise DataError(f"modalities have different numbers of samples: {sizes}")
        present = torch.zeros(batch, len(names), dtype=torch.bool)
        full: dict[str, torch.Tensor] = {}
        for index, name in enumerate(names):
            shape = tuple(self.spec.input_shapes[name])
            if name not in tensors:
                full[name] = torch.zeros(batch, *shape)
                continue
            values = tensors[name]
            if tuple(values.shape[1:]) != shape:
                raise DataError(
                    f"modality {name!r}: expected samples of shape {shape}, got "
                    f"{tuple(values.shape[1:])}"
                )
            flat = values.reshape(batch, -1)
            missing = torch.isnan(flat).all(-1)
            if bool((~torch.isfinite(flat[~missing])).any()):
                raise DataError(f"modality {name!r}: NaN or inf values in a present sample")
            present[:, index] = ~missing
            full[name] = torch.where(missing.view(-1, *[1] * len(shape)), 0.0, values)
        empty = ~present.any(-1)
        if bool(empty.any()):
            raise DataError(f"sample {int(torch.nonzero(empty)[0])} has no modality present")
        output = self.method(full, present)
        probabilities = torch.softmax(output.logits, dim=1)  # classes: dim 1, also for maps
        return Prediction(
            labels=self.method.task.predict(output.logits),
            probabilities=probabilities,
            variance=output.variance,
            present=present,
        )


def load(path: str | Path, imports: Sequence[str] = ()) -> Predictor:
    """Load a run directory (its best checkpoint) or a checkpoint file for prediction.

    `imports`: plugin modules to import first (the ones a run recorded are imported anyway)."""
    import_plugins(imports)
    return Predictor(path)
