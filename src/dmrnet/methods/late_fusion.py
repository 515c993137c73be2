"""Late fusion: one classifier per modality, predictions averaged over the present modalities.

The classic decision-level baseline for missing modalities (e.g. Snoek, Worring and Smeulders,
"Early versus late fusion in semantic video analysis", ACM Multimedia 2005): nothing is fused
before the decision, so a missing modality simply drops out of the average. Each modality's
classifier (its encoder plus a linear layer) is trained on its own: the training loss is the sum
of the per-modality losses, so every classifier learns as if it were alone, from every sample
that has its modality (`model.sampler` defaults to `full`: no modality dropout).

The prediction for a combination is the mean of the member classifiers' class probabilities; the
output logits are the log of that mean (so `softmax(logits)` is the averaged prediction). The
per-modality probabilities are computed once, so every combination is an exact masked average
(`decode_many`).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import SamplerConfig
from dmrnet.data.base import DataSpec
from dmrnet.methods.base import (
    METHODS,
    EncoderFusionMethod,
    EncodersConfig,
    LossOutput,
    MethodOutput,
)
from dmrnet.tasks import Task


class LateFusionConfig(EncodersConfig):
    method: str = "late-fusion"
    sampler: SamplerConfig = Field(
        default_factory=lambda: SamplerConfig(kind="full"),
        description="no dropout: each classifier trains on every sample that has its modality",
    )


def average_probabilities(
    unimodal_logits: torch.Tensor, masks: torch.Tensor, per_combination: bool = False
) -> torch.Tensor:
    """log of the mean class probabilities over the used modalities.

    unimodal_logits (B, M, K, ...) and masks (B, M), one per sample -> (B, K, ...); with
    `per_combination`, masks (C, M) -> (C, B, K, ...).
    """
    probabilities = unimodal_logits.softmax(dim=2)
    weights = masks.to(probabilities.dtype)
    weights = weights / weights.sum(-1, keepdim=True)
    equation = "cm,bm...->cb..." if per_combination else "bm,bm...->b..."
    mean = torch.einsum(equation, weights, probabilities)
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


@METHODS.register("late-fusion")
class LateFusion(EncoderFusionMethod):
    config: LateFusionConfig
    config_class = LateFusionConfig

    def __init__(self, config: LateFusionConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        self.reject_hcr("trains each modality's classifier on its own")
        self.classifiers = nn.ModuleDict(
            {
                name: nn.Linear(config.feature_dim, spec.num_classes)
                for name in self.modalities.names
            }
        )

    def unimodal_logits(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, M, D) -> every modality's own prediction (B, M, K)."""
        return torch.stack(
            [
                self.classifiers[name](features[:, i])
                for i, name in enumerate(self.modalities.names)
            ],
            dim=1,
        )

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        unimodal = self.unimodal_logits(features)
        return MethodOutput(
            logits=average_probabilities(unimodal, mask), extras={"unimodal_logits": unimodal}
        )

    def decode_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[MethodOutput]:
        unimodal = self.unimodal_logits(features)
        fused = average_probabilities(unimodal, masks, per_combination=True)  # (C, B, K)
        return [MethodOutput(logits=fused[c]) for c in range(masks.shape[0])]

    def loss(
        self,
        output: MethodOutput,
        target: torch.Tensor,
        mask: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> LossOutput:
        """Sum over the used modalities of each classifier's own task loss."""
        unimodal = output.extras["unimodal_logits"]  # (B, M, K, ...)
        batch, count = unimodal.shape[:2]
        per_modality = self.task.per_sample_loss(
            unimodal.flatten(0, 1), target.repeat_interleave(count, dim=0)
        ).view(batch, count)
        per_sample = (per_modality * mask.to(per_modality.dtype)).sum(1)
        total = per_sample.mean()
        return LossOutput(total=total, terms={"task": total}, per_sample=per_sample)
