"""Python API: load a trained run and predict from any subset of modalities.

model = dmrnet.load("runs/handwritten")
prediction = model.predict({"pix": pix, "kar": kar}, min_confidence=0.9)  # other views missing
prediction.labels, prediction.confidence, prediction.abstained
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmrnet.calibration import accuracy_thresholds, per_sample
from dmrnet.errors import DataError
from dmrnet.runs import load_checkpoint


@dataclass
class Prediction:
    labels: torch.Tensor  # (B,) predicted class (segmentation: (B, H, W))
    probabilities: torch.Tensor  # (B, K) calibrated (segmentation: (B, K, H, W))
    # (B,) mean embedding variance (None for deterministic methods). Not a confidence: on
    # Handwritten errors have *lower* variance than correct predictions (docs/calibration.md).
    embedding_variance: torch.Tensor | None
    present: torch.Tensor  # (B, M) the modalities each prediction used
    # (B,) calibrated probability of the predicted label (segmentation: per pixel).
    confidence: torch.Tensor
    # (B,) True where the confidence is below the abstention threshold (segmentation: per pixel).
    abstained: torch.Tensor


class Predictor:
    """A trained method in evaluation mode, with the run's config and data description."""

    def __init__(self, path: str | Path) -> None:
        loaded = load_checkpoint(path)
        self.method = loaded.method
        self.config = loaded.config
        self.spec = loaded.spec
        self.modalities = loaded.spec.modalities
        self.calibration = loaded.calibration  # None: trained before calibration existed

    @torch.no_grad()
    def predict(
        self,
        inputs: Mapping[str, np.ndarray | torch.Tensor],
        min_confidence: float | None = None,
        target_accuracy: float | None = None,
    ) -> Prediction:
        """Predict from raw (unstandardized) inputs of any subset of modalities.

        A missing key means that modality is missing for every sample; a sample whose values
        for a modality are all NaN has that modality missing (per-sample missingness).
        Probabilities are temperature-scaled per combination and PAD decides at its calibrated
        threshold (docs/calibration.md). A prediction abstains when its confidence is below
        `min_confidence`, or below the threshold of its combination that reached
        `target_accuracy` on the validation split.
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
        threshold = self._abstention_threshold(present, min_confidence, target_accuracy)
        output = self.method(full, present)
        temperature, decision = per_sample(self.calibration, self.modalities, present)
        per_label = (-1, *[1] * (output.logits.dim() - 2))  # (B,) or, for maps, (B, 1, 1)
        probabilities = torch.softmax(output.logits / temperature.view(*per_label, 1), dim=1)
        labels = self.method.task.decide(output.logits, decision)
        confidence = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B[, H, W])
        return Prediction(
            labels=labels,
            probabilities=probabilities,
            embedding_variance=output.variance,
            present=present,
            confidence=confidence,
            abstained=confidence < threshold.view(per_label),
        )

    def _abstention_threshold(
        self, present: torch.Tensor, min_confidence: float | None, target_accuracy: float | None
    ) -> torch.Tensor:
        """(B,) confidence below which each prediction abstains (0: never)."""
        if min_confidence is not None and target_accuracy is not None:
            raise DataError("give min_confidence or target_accuracy, not both")
        if min_confidence is not None:
            if not 0.0 <= min_confidence <= 1.0:
                raise DataError(f"min_confidence must be in [0, 1], got {min_confidence}")
            return torch.full((present.shape[0],), float(min_confidence), dtype=torch.float64)
        if target_accuracy is None:
            return torch.zeros(present.shape[0], dtype=torch.float64)
        if not 0.0 < target_accuracy <= 1.0:
            raise DataError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
        if self.calibration is None:
            raise DataError(
                "this checkpoint has no calibration: run `dmrnet evaluate RUN_DIR` once to fit "
                "and store it"
            )
        return accuracy_thresholds(self.calibration, self.modalities, present, target_accuracy)


def load(path: str | Path) -> Predictor:
    """Load a run directory (its best checkpoint) or a checkpoint file for prediction."""
    return Predictor(path)
