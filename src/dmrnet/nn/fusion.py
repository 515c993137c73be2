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
        """Per-modality projections W_i f_i: (B, M, in) -> (B, M, out)."""
        blocks = self.weight.view(-1, self.num_modalities, self.in_features)  # (out, M, in)
        return torch.einsum("bmi,omi->bmo", features, blocks)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features (B, M, in), mask (B, M) -> (B, out)."""
        projected = self.project(features)
        return torch.einsum("bm,bmo->bo", mask.to(projected.dtype), projected) + self.bias

    def forward_many(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """features (B, M, in), masks (C, M) -> (C, B, out): every combination at once."""
        projected = self.project(features)
        return torch.einsum("cm,bmo->cbo", masks.to(projected.dtype), projected) + self.bias
