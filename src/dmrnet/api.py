"""Python API: load a trained run and predict from any subset of modalities.

model = dmrnet.load("runs/handwritten", device="cpu")
prediction = model.predict({"pix": pix, "kar": kar}, min_confidence=0.9)  # other views missing
prediction.labels, prediction.names(), prediction.confidence, prediction.abstained
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmrnet.calibration import accuracy_thresholds, per_sample
from dmrnet.errors import DataError
from dmrnet.plugins import import_plugins
from dmrnet.runs import LoadedRun, load_checkpoint


@dataclass
class Prediction:
    labels: torch.Tensor  # (B,) predicted class ((B, H, W) for segmentation)
    probabilities: torch.Tensor  # (B, K) every class's calibrated probability ((B, K, H, W))
    # (B,) mean embedding variance (None for deterministic methods). Not a confidence: on
    # Handwritten errors have *lower* variance than correct predictions (docs/calibration.md).
    embedding_variance: torch.Tensor | None
    present: torch.Tensor  # (B, M) the modalities each prediction used
    # (B,) calibrated probability of the predicted label (segmentation: per pixel).
    confidence: torch.Tensor
    # (B,) True where the confidence is below the abstention threshold (segmentation: per pixel).
    abstained: torch.Tensor
    class_names: tuple[str, ...] | None = None  # names of the K classes, where the data has them

    def names(self) -> list[str]:
        """The predicted class of each sample by name (classification; the index as text where
        classes have no names)."""
        return [class_label(self.class_names, int(label)) for label in self.labels.reshape(-1)]

    @staticmethod
    def concatenate(parts: list[Prediction]) -> Prediction:
        """One prediction from the predictions of consecutive batches."""
        if not parts:
            raise DataError("no predictions to concatenate")
        variance = [p.embedding_variance for p in parts]
        return Prediction(
            labels=torch.cat([p.labels for p in parts]),
            probabilities=torch.cat([p.probabilities for p in parts]),
            embedding_variance=None if variance[0] is None else torch.cat(variance),  # type: ignore[arg-type]
            present=torch.cat([p.present for p in parts]),
            confidence=torch.cat([p.confidence for p in parts]),
            abstained=torch.cat([p.abstained for p in parts]),
            class_names=parts[0].class_names,
        )


def class_label(class_names: tuple[str, ...] | None, index: int) -> str:
    """Class `index` by name, or the index as text where the data has no class names."""
    return class_names[index] if class_names else str(index)


class Predictor:
    """A trained method in evaluation mode, with the run's config and data description."""

    def __init__(self, run: str | Path | LoadedRun, device: str | torch.device = "cpu") -> None:
        """`run`: a run directory (its best checkpoint), a checkpoint file, or a loaded run."""
        loaded = run if isinstance(run, LoadedRun) else load_checkpoint(run)
        self.device = _device(device)
        self.method = loaded.method.to(self.device)
        self.config = loaded.config
        self.spec = loaded.spec
        self.modalities = loaded.spec.modalities
        self.checkpoint = loaded.checkpoint
        self.calibration = loaded.calibration  # None: trained before calibration existed

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names

    @property
    def batch_size(self) -> int:
        """Rows per forward pass by default: the run's evaluation batch size."""
        return int(self.config.eval.batch_size)

    def probabilities(self, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Class probabilities (classes on dim 1, also for maps) of logits predicted with the
        (B, M) modalities `present`, temperature-scaled per combination (docs/calibration.md).
        predict and the exported graphs (dmrnet.export) both call this one step."""
        temperature, _ = per_sample(self.calibration, self.modalities, present)
        per_class = (-1, *[1] * (logits.dim() - 1))  # (B, 1) or, for maps, (B, 1, 1, 1)
        return torch.softmax(logits / temperature.to(logits).view(per_class), dim=1)

    @torch.no_grad()
    def predict(
        self,
        inputs: Mapping[str, Any],
        batch_size: int | None = None,
        min_confidence: float | None = None,
        target_accuracy: float | None = None,
    ) -> Prediction:
        """Predict from raw (unstandardized) inputs of any subset of modalities.

        A missing key means that modality is missing for every sample; a sample whose values
        for a modality are all NaN has that modality missing (per-sample missingness). An array
        of one sample's shape (e.g. 1-D for vector data) is a single sample. Rows go through the
        model `batch_size` at a time (default: the run's evaluation batch size).

        Probabilities are temperature-scaled per combination and PAD decides at its calibrated
        threshold (docs/calibration.md). A prediction abstains when its confidence is below
        `min_confidence`, or below the threshold of its combination that reached
        `target_accuracy` on the validation split.
        """
        batches = self.predict_batches([inputs], batch_size, min_confidence, target_accuracy)
        return Prediction.concatenate(list(batches))

    def predict_batches(
        self,
        batches: Iterable[Mapping[str, Any]],
        batch_size: int | None = None,
        min_confidence: float | None = None,
        target_accuracy: float | None = None,
    ) -> Iterator[Prediction]:
        """Predict batch after batch (e.g. from `dmrnet.inputs.read_inputs`), holding one batch
        at a time, so memory stays bounded however many rows there are; a batch of more than
        `batch_size` rows is split."""
        size = self._batch_size(batch_size)
        self._check_abstention(min_confidence, target_accuracy)
        start = 0
        for batch in batches:
            arrays = self.check_inputs(batch)
            rows = next(iter(arrays.values())).shape[0]
            for offset in range(0, rows, size):
                part = {k: v[offset : offset + size] for k, v in arrays.items()}
                yield self._predict_batch(part, start + offset, min_confidence, target_accuracy)
            start += rows

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate user inputs: known modalities, numeric arrays of the model's sample shapes,
        equal sample counts; a single sample gets its batch dimension. Raises DataError."""
        names = self.modalities.names
        if not isinstance(inputs, Mapping):
            raise DataError(
                f"inputs must be a mapping of modality name to array, got {type(inputs).__name__}"
            )
        unknown = sorted(set(inputs) - set(names), key=str)
        if unknown:
            raise DataError(f"unknown modality {unknown[0]!r}; this model knows {'+'.join(names)}")
        if not inputs:
            raise DataError(f"no modality given; this model knows {'+'.join(names)}")
        arrays = {
            name: _samples(name, inputs[name], tuple(self.spec.input_shapes[name]))
            for name in names
            if name in inputs
        }
        sizes = {k: v.shape[0] for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"modalities have different numbers of samples: {sizes}")
        if next(iter(sizes.values())) == 0:
            raise DataError(f"no samples: {', '.join(arrays)} hold 0 rows")
        return arrays

    def _batch_size(self, batch_size: int | None) -> int:
        size = self.batch_size if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DataError(f"batch size must be a positive integer, got {size!r}")
        return size

    def _check_abstention(
        self, min_confidence: float | None, target_accuracy: float | None
    ) -> None:
        if min_confidence is not None and target_accuracy is not None:
            raise DataError("give min_confidence or target_accuracy, not both")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise DataError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if target_accuracy is not None:
            if not 0.0 < target_accuracy <= 1.0:
                raise DataError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
            if self.calibration is None:
                raise DataError(
                    "this checkpoint has no calibration: run `dmrnet evaluate RUN_DIR` once to "
                    "fit and store it"
                )

    def _abstention_threshold(
        self, present: torch.Tensor, min_confidence: float | None, target_accuracy: float | None
    ) -> torch.Tensor:
        """(B,) confidence below which each prediction abstains (0: never)."""
        if min_confidence is not None:
            return torch.full((present.shape[0],), float(min_confidence), dtype=torch.float64)
        if target_accuracy is None or self.calibration is None:
            return torch.zeros(present.shape[0], dtype=torch.float64)
        return accuracy_thresholds(self.calibration, self.modalities, present, target_accuracy)

    def _predict_batch(
        self,
        arrays: Mapping[str, np.ndarray],
        start: int,
        min_confidence: float | None = None,
        target_accuracy: float | None = None,
    ) -> Prediction:
        """One forward pass over checked arrays; `start` numbers the rows in error messages."""
        names = self.modalities.names
        batch = next(iter(arrays.values())).shape[0]
        present = torch.zeros(batch, len(names), dtype=torch.bool)
        full: dict[str, torch.Tensor] = {}
        for index, name in enumerate(names):
            shape = tuple(self.spec.input_shapes[name])
            if name not in arrays:
                full[name] = torch.zeros(batch, *shape)
                continue
            values = torch.from_numpy(np.array(arrays[name], dtype=np.float32))  # a copy
            flat = values.reshape(batch, -1)
            missing = torch.isnan(flat).all(-1)
            bad = ~torch.isfinite(flat).all(-1) & ~missing
            if bool(bad.any()):
                raise DataError(
                    f"modality {name!r}: NaN or inf values in present sample "
                    f"{start + int(torch.nonzero(bad)[0])}"
                )
            present[:, index] = ~missing
            full[name] = torch.where(missing.view(-1, *[1] * len(shape)), 0.0, values)
        empty = ~present.any(-1)
        if bool(empty.any()):
            first = start + int(torch.nonzero(empty)[0])
            raise DataError(f"sample {first} has no modality present")
        device = self.device
        threshold = self._abstention_threshold(present, min_confidence, target_accuracy)
        with torch.no_grad():
            output = self.method({k: v.to(device) for k, v in full.items()}, present.to(device))
            probabilities = self.probabilities(output.logits, present.to(device)).cpu()
            _, decision = per_sample(self.calibration, self.modalities, present)
            labels = self.method.task.decide(output.logits.cpu(), decision)
        confidence = probabilities.gather(1, labels.unsqueeze(1)).squeeze(1)  # (B[, H, W])
        per_label = (-1, *[1] * (confidence.dim() - 1))  # (B,) or, for maps, (B, 1, 1)
        return Prediction(
            labels=labels,
            probabilities=probabilities,
            embedding_variance=None if output.variance is None else output.variance.cpu(),
            present=present,
            confidence=confidence,
            abstained=confidence < threshold.view(per_label),
            class_names=self.class_names,
        )


def _device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DataError(f"device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {device!r}: CUDA is not available on this machine")
    return resolved


def _samples(name: str, values: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`values` as a numeric (N, *shape) array; one sample of `shape` becomes N = 1."""
    where = f"modality {name!r}"
    if values is None:
        raise DataError(f"{where}: got None, expected an array of numbers")
    if isinstance(values, torch.Tensor):
        if values.is_complex():
            raise DataError(f"{where}: holds complex values ({values.dtype}); give real numbers")
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as error:  # ragged nested lists
        raise DataError(f"{where}: not a rectangular array of numbers ({error})") from None
    kind = array.dtype.kind
    if kind == "c":
        raise DataError(f"{where}: holds complex values ({array.dtype}); give real numbers")
    if kind in "OUSV":
        found = {"O": "Python objects", "U": "strings", "S": "bytes", "V": "records"}[kind]
        raise DataError(f"{where}: holds {found} (dtype {array.dtype}), expected numbers")
    if kind not in "biuf":
        raise DataError(f"{where}: holds {array.dtype} values, expected numbers")
    single = array.shape == shape and shape != (1,)
    if single or (array.ndim == 1 and shape == (1,)):
        array = array.reshape(-1, *shape)  # one sample, or N samples of one feature
    if array.ndim == 0 or tuple(array.shape[1:]) != shape:
        found_shape = "a scalar" if array.ndim == 0 else f"shape {tuple(array.shape)}"
        batch_shape = ", ".join(map(str, ("N", *shape)))
        raise DataError(
            f"{where}: expected samples of shape {shape} (an array ({batch_shape}) or one sample), "
            f"got {found_shape}"
        )
    return array


def load(
    path: str | Path, device: str | torch.device = "cpu", imports: Sequence[str] = ()
) -> Predictor:
    """Load a run directory (its best checkpoint) or a checkpoint file for prediction on
    `device` (e.g. "cpu", "cuda", "cuda:1").

    `imports`: plugin modules to import first (the ones a run recorded are imported anyway)."""
    import_plugins(imports)
    return Predictor(path, device=device)
