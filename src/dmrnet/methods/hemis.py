"""HeMIS: Hetero-Modal Image Segmentation (Havaei, Guizard, Chapados, Bengio; MICCAI 2016,
arXiv 1607.05194).

Each modality has its own encoder ("back end"). The "abstraction layer" fuses the features of the
modalities that are available by their first and second moments across modalities, the mean and
the variance, so any non-empty subset gives a feature of the same size; the "front end" maps the
concatenated [mean, variance] to the prediction. With a single modality the variance is defined
as zero (paper, section 2). The variance is the unbiased estimate over the available modalities,
1/(|K| - 1) sum_k (f_k - mean)^2, as in the paper.

Training drops modalities at random (the paper keeps at least one); dmrnet uses the method's
sampler (`model.sampler`, uniform over the available combinations by default). The front end here
is dmrnet's ModDrop head (Linear -> BatchNorm -> Linear) on [mean, variance], so the comparison
with ModDrop and DMRNet isolates the fusion rule.

The front end's first layer is linear in [mean, variance], and both moments expand into
per-modality and per-modality-pair terms, so all combinations are decoded exactly from one encoder
pass and one projection per modality and pair (`decode_many`).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from dmrnet.data.base import DataSpec
from dmrnet.methods.base import METHODS, EncoderFusionConfig, EncoderFusionMethod, MethodOutput
from dmrnet.nn.fusion import eval_affine
from dmrnet.tasks import Task


class HeMISConfig(EncoderFusionConfig):
    method: str = "hemis"
    head_norm: bool = Field(True, description="BatchNorm in the front end (as ModDrop's head)")


def mean_and_variance(
    features: torch.Tensor, masks: torch.Tensor, per_combination: bool = False
) -> torch.Tensor:
    """HeMIS abstraction layer: [mean, variance] over the modalities each mask uses.

    features (B, M, D) and masks (B, M), one per sample -> (B, 2D); with `per_combination`,
    masks (C, M) -> (C, B, 2D). The variance is unbiased and zero where one modality is used.
    """
    weights = masks.to(features.dtype)
    if per_combination:
        # (C, M) @ (M, B * D): one matrix product per moment for all combinations.
        flat = features.transpose(0, 1).flatten(1)  # (M, B * D)
        shape = (masks.shape[0], features.shape[0], features.shape[2])
        total = (weights @ flat).view(shape)
        squares = (weights @ flat.square()).view(shape)
        count = weights.sum(-1).view(-1, 1, 1)
    else:
        total = torch.einsum("bm,bmd->bd", weights, features)
        squares = torch.einsum("bm,bmd->bd", weights, features.square())
        count = weights.sum(-1, keepdim=True)
    mean = total / count
    # sum_k (f_k - mean)^2 = sum_k f_k^2 - n mean^2; clamped: rounding can make it slightly < 0.
    spread = (squares - count * mean.square()).clamp_min(0.0)
    variance = torch.where(count > 1, spread / (count - 1).clamp_min(1.0), torch.zeros_like(spread))
    return torch.cat([mean, variance], dim=-1)


@METHODS.register("hemis")
class HeMIS(EncoderFusionMethod):
    config: HeMISConfig
    config_class = HeMISConfig

    def __init__(self, config: HeMISConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        self.front_end = nn.Sequential(
            nn.Linear(2 * config.feature_dim, config.embed_dim),
            nn.BatchNorm1d(config.embed_dim) if config.head_norm else nn.Identity(),
            nn.Linear(config.embed_dim, spec.num_classes),
        )

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        return MethodOutput(logits=self.front_end(mean_and_variance(features, mask)))

    def decode_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[MethodOutput]:
        """Exact, without fusing each combination separately. The front end's first layer is
        linear in [mean, variance], and with n used modalities, u the mask, W = [W_mean, W_var]:

            W_mean mean = sum_m (u_m / n) W_mean f_m
            W_var var = sum_m u_m / (n-1) W_var f_m^2
                        - sum_{m,k} u_m u_k / (n (n-1)) W_var (f_m * f_k)

        So the projections are computed once per modality and per modality pair, and every
        combination is one weighted sum of them: a single matrix product. In evaluation the
        BatchNorm and the classifier are folded in as well."""
        count, batch, modalities = masks.shape[0], features.shape[0], features.shape[1]
        first, norm, head = self.front_end
        weight, bias = first.weight, first.bias  # (E, 2D), (E,)
        affine = eval_affine(norm)
        if affine is not None:
            # Evaluation: BatchNorm and the classifier are affine too; fold them into the first
            # layer, so the projections below are computed at the (small) number of classes.
            scale, shift = affine
            weight = head.weight @ (weight * scale.reshape(-1, 1))  # (K, 2D)
            bias = head(bias * scale + shift)
        w_mean, w_var = weight.split(self.config.feature_dim, dim=1)  # (width, D) each
        rows, cols = torch.triu_indices(modalities, modalities, device=features.device)
        pairs = features[:, rows] * features[:, cols]  # (B, P, D): the pairs m <= k
        projections = torch.cat(
            [features @ w_mean.t(), features.square() @ w_var.t(), pairs @ w_var.t()], dim=1
        )  # (B, 2M + P, width)
        u = masks.to(features.dtype)  # (C, M)
        n = u.sum(-1, keepdim=True)  # (C, 1)
        spread = n > 1  # the variance of a single modality is zero
        pair_count = u[:, rows] * u[:, cols] * torch.where(rows == cols, 1.0, 2.0).to(u)
        weights = torch.cat(
            [
                u / n,
                torch.where(spread, u / (n - 1).clamp_min(1.0), 0.0),
                torch.where(spread, -pair_count / (n * (n - 1)).clamp_min(1.0), 0.0),
            ],
            dim=1,
        )  # (C, 2M + P)
        flat = projections.transpose(0, 1).flatten(1)  # (2M + P, B * width)
        logits = (weights @ flat).view(count, batch, -1) + bias
        if affine is None:  # training-mode BatchNorm: normalize the fused batch, then classify
            logits = head(norm(logits.flatten(0, 1))).unflatten(0, (count, batch))
        return [MethodOutput(logits=logits[c]) for c in range(count)]
