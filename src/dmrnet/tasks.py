"""Tasks: what a prediction is, its per-sample loss and its metrics.

Methods, the engine and the evaluation ask the task instead of branching on a dataset: a
classification task and (later) segmentation or presentation-attack detection plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dmrnet.data.base import DataSpec
from dmrnet.registry import Registry

if TYPE_CHECKING:
    import torchmetrics

# torchmetrics and dmrnet.metrics are imported where metrics are made: importing torchmetrics
# costs about 2 s (scipy.signal, matplotlib), and loading a model for prediction needs none.


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool = True


class Task:
    """Base class. Subclasses define the loss, the prediction and the metric set."""

    metrics: tuple[MetricInfo, ...]

    @classmethod
    def from_spec(cls, spec: DataSpec) -> Task:
        raise NotImplementedError

    @property
    def headline(self) -> MetricInfo:
        """The metric that tables, summaries and checkpoint selection use."""
        return self.metrics[0]

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) task loss of each sample; the HCR needs it per sample."""
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, logits: torch.Tensor, decision: torch.Tensor | None) -> torch.Tensor:
        """`predict`, deciding with the values of `make_calibration` fitted on validation, one
        per sample (B,) (None: not calibrated). Tasks without calibration predict."""
        return self.predict(logits)

    def metric_input(self, logits: torch.Tensor) -> torch.Tensor:
        """What `make_metrics`' metrics are updated with: the logits, unless the metrics only
        need the predicted labels and the task computes them once for all of its metrics."""
        return logits

    def make_metrics(self) -> nn.ModuleDict:
        """Fresh torchmetrics objects keyed by metric name (they sync across DDP processes)."""
        raise NotImplementedError

    def make_combination_metrics(self, count: int) -> torchmetrics.Metric | None:
        """Optional fast path: ONE metric for `count` combinations at once, updated with
        (logits (C, B, ...), target (B, ...), usable (C, B)) and computing {name: (C,) values}
        for the names of `metrics`. Creating and updating one torchmetrics object per
        combination costs more than decoding all 63 combinations of a 6-view data set, so tasks
        with simple metrics provide this; None falls back to `make_metrics` per combination."""
        return None

    # -- optional calibration on held-out data (presentation-attack detection's threshold)
    def make_calibration(self) -> torchmetrics.Metric | None:
        """A metric, updated with (logits, target) like the others, whose scalar `compute()` is
        what the task's decisions need from the validation split (e.g. a decision threshold);
        None when the task's decisions need no calibration. The evaluation computes it on the
        validation split per combination and builds the test metrics with
        `make_calibrated_metrics(value)`."""
        return None

    def make_calibrated_metrics(self, calibration: float) -> nn.ModuleDict:
        """The metrics of `make_metrics`, deciding with a value computed by `make_calibration`."""
        return self.make_metrics()

    # -- optional outputs a person can look at; a task without them (classification) keeps these
    def visualize(
        self, method: Any, dataset: Any, combinations: list[tuple[int, ...]], path: Path
    ) -> Path | None:
        """Write a picture of a few samples of `dataset` predicted under each combination to
        `path`; None when the task has no such picture."""
        return None

    def write_predictions(
        self, prediction: Any, out_dir: Path, spec: DataSpec
    ) -> list[Path] | None:
        """Write `dmrnet predict` results in the task's own format (e.g. colour masks) into
        `out_dir`; None when the task has none and the per-sample CSV is the output."""
        return None


class ClassificationTask(Task):
    """Single-label classification with cross-entropy; metric: accuracy (micro, i.e. fraction
    of samples correct)."""

    metrics = (MetricInfo("accuracy"),)

    def __init__(self, num_classes: int, label_smoothing: float = 0.0) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    @classmethod
    def from_spec(cls, spec: DataSpec) -> ClassificationTask:
        return cls(spec.num_classes)

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, reduction="none", label_smoothing=self.label_smoothing
        )

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def make_metrics(self) -> nn.ModuleDict:
        import torchmetrics

        return nn.ModuleDict(
            {
                "accuracy": torchmetrics.classification.MulticlassAccuracy(
                    self.num_classes, average="micro"
                )
            }
        )

    def make_combination_metrics(self, count: int) -> torchmetrics.Metric | None:
        if type(self).make_metrics is not ClassificationTask.make_metrics:
            return None  # a subclass with other metrics (e.g. presentation-attack detection)
        from dmrnet.metrics import CombinationAccuracy

        return CombinationAccuracy(count)


class SegmentationTask(Task):
    """Semantic segmentation: per-pixel cross-entropy, pixels labelled `ignore_index` ignored.

    Logits are (B, K, H, W), targets (B, H, W). A sample's loss is the mean over its valid pixels
    (weighted by `class_weights` when given, e.g. ESANet's median-frequency weights), so every
    sample counts alike in the HCR's per-sample loss. Metrics: mIoU (headline: the mean over the
    classes that occur in the ground truth or the prediction), pixel accuracy, and the IoU of each
    class (a vector, reported per class).
    """

    metrics = (MetricInfo("miou"), MetricInfo("pixel_accuracy"))

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = None,
        class_weights: list[float] | None = None,
    ) -> None:
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_weights = None if class_weights is None else torch.tensor(class_weights)

    @classmethod
    def from_spec(cls, spec: DataSpec) -> SegmentationTask:
        return cls(spec.num_classes, spec.ignore_index, spec.extra.get("class_weights"))

    def per_sample_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = -100 if self.ignore_index is None else self.ignore_index
        weight = None if self.class_weights is None else self.class_weights.to(logits)
        per_pixel = F.cross_entropy(
            logits, target, weight=weight, ignore_index=ignore, reduction="none"
        )  # (B, H, W), 0 at ignored pixels
        valid = target != ignore
        if weight is None:
            normalizer = valid.to(logits.dtype)
        else:
            normalizer = weight[torch.where(valid, target, 0)] * valid
        return per_pixel.flatten(1).sum(1) / normalizer.flatten(1).sum(1).clamp(min=1e-12)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        # max(1).indices: the same labels (the first maximum) as argmax(1), which is ~8x slower
        # on CPU over the class axis of (B, K, H, W) maps.
        return logits.max(1).indices

    def metric_input(self, logits: torch.Tensor) -> torch.Tensor:
        # Every metric below decides by argmax: the labels, computed once instead of per metric.
        return self.predict(logits)

    def make_metrics(self) -> nn.ModuleDict:
        import torchmetrics

        classes, ignore = self.num_classes, self.ignore_index
        # validate_args=False: the labels were checked when the data was read (check_labels) and
        # the predictions are labels; the per-update checks (torch.unique) cost a third of
        # the evaluation.
        checks = {"ignore_index": ignore, "validate_args": False}
        return nn.ModuleDict(
            {
                "miou": torchmetrics.classification.MulticlassJaccardIndex(
                    classes, average="macro", **checks
                ),
                "pixel_accuracy": torchmetrics.classification.MulticlassAccuracy(
                    classes, average="micro", **checks
                ),
                # A vector: classes absent from both ground truth and prediction are NaN.
                "iou": torchmetrics.classification.MulticlassJaccardIndex(
                    classes, average="none", zero_division=float("nan"), **checks
                ),
            }
        )

    def visualize(
        self, method: Any, dataset: Any, combinations: list[tuple[int, ...]], path: Path
    ) -> Path | None:
        from dmrnet.visualize import prediction_grid

        # The picture lies in the run directory: its name titles the picture.
        return prediction_grid(
            method, dataset, combinations, path, run_name=path.resolve().parent.name
        )

    def write_predictions(
        self, prediction: Any, out_dir: Path, spec: DataSpec
    ) -> list[Path] | None:
        from dmrnet.visualize import write_masks

        return write_masks(prediction, out_dir, spec)


class PresentationAttackTask(ClassificationTask):
    """Binary presentation-attack detection (face anti-spoofing): bona fide vs attack.

    Cross-entropy over 2 logits; metrics per ISO/IEC 30107-3 (see dmrnet.metrics): ACER (the
    headline, lower is better), APCER, BPCER, HTER and accuracy. `bona_fide_class` says which
    class index is bona fide (CASIA-SURF and CeFA lists: 1). `threshold` is the decision rule:

    - ``argmax``: bona fide when its logit is the larger, as the paper's code;
    - ``eer``: the test split is decided at the equal-error threshold of the validation split
      (one threshold per modality combination, calibrated after training); validation itself
      (checkpoint selection) is scored at its own equal-error threshold.

    Both come from the dataset's `DataSpec.extra` (`bona_fide_class`, `threshold`).
    """

    metrics = (
        MetricInfo("acer", higher_is_better=False),
        MetricInfo("apcer", higher_is_better=False),
        MetricInfo("bpcer", higher_is_better=False),
        MetricInfo("hter", higher_is_better=False),
        MetricInfo("accuracy"),
    )
    THRESHOLDS = ("argmax", "eer")

    def __init__(self, bona_fide_class: int = 1, threshold: str = "argmax") -> None:
        super().__init__(num_classes=2)
        if bona_fide_class not in (0, 1):
            raise ValueError(f"bona_fide_class must be 0 or 1, got {bona_fide_class!r}")
        if threshold not in self.THRESHOLDS:
            raise ValueError(f"threshold must be one of {self.THRESHOLDS}, got {threshold!r}")
        self.bona_fide_class = bona_fide_class
        self.threshold = threshold

    @classmethod
    def from_spec(cls, spec: DataSpec) -> PresentationAttackTask:
        if spec.num_classes != 2:
            raise ValueError(
                f"dataset {spec.name!r}: presentation-attack detection needs 2 classes, "
                f"got {spec.num_classes}"
            )
        return cls(
            bona_fide_class=int(spec.extra.get("bona_fide_class", 1)),
            threshold=str(spec.extra.get("threshold", "argmax")),
        )

    def _metrics(self, threshold: float | None, self_calibrate: bool) -> nn.ModuleDict:
        from dmrnet.metrics import PresentationAttackMetric

        return nn.ModuleDict(
            {
                info.name: PresentationAttackMetric(
                    info.name, self.bona_fide_class, threshold, self_calibrate
                )
                for info in self.metrics
            }
        )

    def make_metrics(self) -> nn.ModuleDict:
        return self._metrics(None, self_calibrate=self.threshold == "eer")

    def make_calibration(self) -> torchmetrics.Metric | None:
        if self.threshold != "eer":
            return None
        from dmrnet.metrics import EqualErrorThreshold

        return EqualErrorThreshold(self.bona_fide_class)

    def make_calibrated_metrics(self, calibration: float) -> nn.ModuleDict:
        return self._metrics(float(calibration), self_calibrate=False)

    def decide(self, logits: torch.Tensor, decision: torch.Tensor | None) -> torch.Tensor:
        """Bona fide where the bona fide log-odds reach the sample's threshold (as the metrics
        decide with `make_calibrated_metrics`); argmax when there is none."""
        if decision is None:
            return self.predict(logits)
        from dmrnet.metrics import pad_scores

        accepted = pad_scores(logits, self.bona_fide_class) >= decision.to(logits)
        bona_fide = torch.full_like(accepted, self.bona_fide_class, dtype=torch.long)
        return torch.where(accepted, bona_fide, 1 - bona_fide)


TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("classification")(ClassificationTask)
TASKS.register("segmentation")(SegmentationTask)
TASKS.register("pad")(PresentationAttackTask)


def build_task(spec: DataSpec) -> Task:
    return TASKS.get(spec.task).from_spec(spec)
