"""Masked fusion of per-modality features.

The paper's fusion zeroes the features of absent modalities and concatenates them, and the next
layer is linear (the Gaussian heads, or the ModDrop projection). Concatenation followed by a
Linear layer is a sum of per-modality blocks:

    W [m_1 f_1; ...; m_M f_M] + b = sum_i m_i (W_i f_i) + b

`MaskedLinearFusion` computes it that way. The result is the same as concat + Linear, but the
per-modality projections W_i f_i are computed once and any number of combinations is then a
cheap masked sum: that is what makes evaluating all 2^M - 1 combinations cost about one pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def masked_concat(features: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Concatenate (B, D_i, ...) features along dim 1 after zeroing absent ones; mask (B, M)."""
    parts = []
    for index, feature in enumerate(features):
        keep = mask[:, index].to(feature.dtype).view(-1, *([1] * (feature.dim() - 1)))
        parts.append(feature * keep)
    return torch.cat(parts, dim=1)


class MaskedLinearFusion(nn.Module):
    """Linear(concat of M masked (B, D) features) -> (B, out), computed block-wise."""

    def __init__(self, num_modalities: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.in_features = in_features
        # Stored as one (out, M * in) matrix, exactly nn.Linear's layout and initialization.
        self.weight = nn.Parameter(torch.empty(out_features, num_modalities * in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(num_modalities * in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Per-modality projections W_i f_i: (B, M, in) -> (M, B, out), one batched matmul."""
        blocks = self.weight.view(-1, self.num_modalities, self.in_features)  # (out, M, in)
        return torch.bmm(features.transpose(0, 1), blocks.permute(1, 2, 0))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features (B, M, in), mask (B, M) -> (B, out)."""
        projected = self.project(features)  # (M, B, out)
        weights = mask.t().to(projected.dtype).unsqueeze(-1)  # (M, B, 1)
        return (projected * weights).sum(0) + self.bias

    def forward_many(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """features (B, M, in), masks (C, M) -> (C, B, out): every combination at once."""
        projected = self.project(features)  # (M, B, out)
        count, (modalities, batch, out) = masks.shape[0], projected.shape
        summed = masks.to(projected.dtype) @ projected.reshape(modalities, batch * out)
        return summed.view(count, batch, out) + self.bias


def eval_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) with norm(x) == x * scale + shift: an Identity, or a BatchNorm1d in eval
    mode (then it is affine in its input). None when the norm is not affine (training mode)."""
    if isinstance(norm, nn.Identity):
        return torch.ones(()), torch.zeros(())
    if isinstance(norm, nn.BatchNorm1d) and not norm.training and norm.track_running_stats:
        assert norm.running_var is not None and norm.running_mean is not None
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        return scale, shift
    return None


def fused_many(
    fusion: MaskedLinearFusion,
    norm: nn.Module,
    features: torch.Tensor,
    masks: torch.Tensor,
    head: nn.Linear | None = None,
) -> torch.Tensor:
    """head(norm(fusion(features, mask))) for every mask in `masks` (C, M) -> (C, B, out).

    In evaluation the whole chain is affine in each modality's features, so the per-modality
    contributions are computed once, at the (small) output width, and every combination is one
    row of a single matrix product: evaluating all 2^M - 1 combinations then costs about as much
    as one forward pass. Falls back to the plain computation when `norm` is not affine.
    """
    affine = eval_affine(norm)
    if affine is None:
        fused = norm(fusion.forward_many(features, masks).flatten(0, 1))
        out = fused if head is None else head(fused)
        return out.unflatten(0, (masks.shape[0], features.shape[0]))
    scale, shift = affine
    contributions = fusion.project(features) * scale  # (M, B, E)
    constant = fusion.bias * scale + shift  # (E,)
    if head is not None:
        contributions = contributions @ head.weight.t()  # (M, B, K)
        constant = head(constant)
    _, batch, width = contributions.shape
    # The constant is one more "modality" that every combination uses: no extra pass over C*B.
    rows = torch.cat([contributions, constant.expand(1, batch, width)]).reshape(-1, batch * width)
    selector = torch.cat(
        [masks.to(rows.dtype), masks.new_ones(masks.shape[0], 1, dtype=rows.dtype)], 1
    )
    return (selector @ rows).view(masks.shape[0], batch, width)
