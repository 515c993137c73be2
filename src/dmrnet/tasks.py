"""Tasks: what a prediction is, its per-sample loss and its metrics.

Methods, the engine and the evaluation ask the task instead of branching on a dataset: a
classification task and (later) segmentation or presentation-attack detection plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from dmrnet.data.base import DataSpec
from dmrnet.registry import Registry


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

    def make_metrics(self) -> nn.ModuleDict:
        """Fresh torchmetrics objects keyed by metric name (they sync across DDP processes)."""
        raise NotImplementedError


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
        return nn.ModuleDict(
            {
                "accuracy": torchmetrics.classification.MulticlassAccuracy(
                    self.num_classes, average="micro"
                )
            }
        )


TASKS: Registry[type[Task]] = Registry("task")
TASKS.register("classification")(ClassificationTask)


def build_task(spec: DataSpec) -> Task:
    return TASKS.get(spec.task).from_spec(spec)
