"""ModDrop: modality dropout on a deterministic common embedding (Neverova et al., TPAMI 2016).

The paper's baseline and the first rung of its ablation ladder: the same network as DMRNet with
the logvar head, the sampling and the KL term removed. Absent modalities are zeroed at feature
level, so every combination is mapped to one point of a shared embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import ModelConfig
from dmrnet.data.base import DataSpec
from dmrnet.methods.base import METHODS, EncoderFusionMethod, MethodOutput
from dmrnet.nn import MaskedLinearFusion
from dmrnet.nn.fusion import fused_many
from dmrnet.tasks import Task


class ModDropConfig(ModelConfig):
    method: str = "moddrop"
    mu_norm: bool = Field(True, description="BatchNorm on the embedding (as DMRNet's mu head)")


@METHODS.register("moddrop")
class ModDrop(EncoderFusionMethod):
    config: ModDropConfig
    config_class = ModDropConfig

    def __init__(self, config: ModDropConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        self.fusion = MaskedLinearFusion(len(self.modalities), config.feature_dim, config.embed_dim)
        self.norm = nn.BatchNorm1d(config.embed_dim) if config.mu_norm else nn.Identity()
        self.classifier = nn.Linear(config.embed_dim, spec.num_classes)

    def embed(self, project: Callable[[nn.Module], torch.Tensor]) -> MethodOutput:
        return MethodOutput(logits=self.classifier(self.norm(project(self.fusion))))

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        return self.embed(lambda fusion: fusion(features, mask))

    def decode_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[MethodOutput]:
        logits = fused_many(self.fusion, self.norm, features, masks, head=self.classifier)
        return [MethodOutput(logits=x) for x in logits]
