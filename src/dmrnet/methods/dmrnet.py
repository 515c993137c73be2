"""DMRNet: Decoupled Multimodal Representation Network (Wei et al., ECCV 2024, arXiv 2407.04458).

Per-modality encoders -> masked concat fusion -> Gaussian embedding N(mu, std^2) (mu and logvar
heads) -> classifier on a sampled z in training and on mu in evaluation. Loss:

    L = CE + alpha * KL(N(mu, std^2) || N(0, I)) + beta * L_hcr

Modelling each input's embedding as a distribution lets the different modality combinations of
one sample occupy different regions instead of being forced onto one point, and the variance
says how uncertain the embedding of a combination is (paper sections 3.2-3.3).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import HCRConfig, ModelConfig
from dmrnet.data.base import DataSpec
from dmrnet.methods.base import METHODS, EncoderFusionMethod, MethodOutput, decode_with
from dmrnet.nn import GaussianEmbedding, MaskedLinearFusion, gaussian_kl
from dmrnet.nn.fusion import fused_many
from dmrnet.nn.gaussian import LOGVAR_BOUND
from dmrnet.tasks import Task


class DMRNetConfig(ModelConfig):
    method: str = "dmrnet"
    kl_weight: float = Field(1e-3, ge=0.0, description="alpha; the paper's code uses 1e-3")
    mu_norm: bool = Field(True, description="BatchNorm on the mu head (paper: yes)")
    logvar_norm: bool = Field(True, description="BatchNorm on the logvar head (paper: yes)")
    logvar_init_bias: float = Field(0.0, description="initial logvar (negative: little noise)")
    hcr: HCRConfig = Field(default_factory=lambda: HCRConfig(rule="unimodal-max"))


@METHODS.register("dmrnet")
class DMRNet(EncoderFusionMethod):
    config: DMRNetConfig
    config_class = DMRNetConfig
    provides_variance = True

    def __init__(self, config: DMRNetConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        count, dim = len(self.modalities), config.feature_dim
        self.embedding = GaussianEmbedding(
            lambda: MaskedLinearFusion(count, dim, config.embed_dim),
            config.embed_dim,
            mu_norm=config.mu_norm,
            logvar_norm=config.logvar_norm,
            logvar_init_bias=config.logvar_init_bias,
        )
        self.classifier = nn.Linear(config.embed_dim, spec.num_classes)

    def embed(self, project: Callable[[nn.Module], torch.Tensor]) -> MethodOutput:
        gaussian = self.embedding.heads(
            project(self.embedding.mu_proj), project(self.embedding.logvar_proj)
        )
        return MethodOutput(
            logits=self.classifier(gaussian.z),
            variance=gaussian.variance_per_sample(),
            extras={"mu": gaussian.mu, "logvar": gaussian.logvar},
        )

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        return self.embed(lambda fusion: fusion(features, mask))

    def decode_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[MethodOutput]:
        if self.training:  # sampling: no shortcut
            return decode_with(self.embed, features, masks)
        # Evaluation predicts from mu; mu -> logits is affine, so it folds (see fused_many).
        embedding = self.embedding
        logits = fused_many(
            embedding.mu_proj, embedding.mu_norm, features, masks, head=self.classifier
        )
        logvar = fused_many(embedding.logvar_proj, embedding.logvar_norm, features, masks)
        # In place: this (C, B, E) tensor is the largest of the evaluation.
        variance = logvar.clamp_(-LOGVAR_BOUND, LOGVAR_BOUND).exp_().mean(-1)  # (C, B)
        return [MethodOutput(logits=x, variance=v) for x, v in zip(logits, variance, strict=True)]

    def extra_losses(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        kl = gaussian_kl(output.extras["mu"], output.extras["logvar"])
        return {"kl": self.config.kl_weight * kl}
