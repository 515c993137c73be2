"""Input standardization stored in the model, so checkpoints carry training statistics."""

from __future__ import annotations

import torch
from torch import nn


class Standardize(nn.Module):
    """(x - mean) / std with buffers; identity when no statistics are given."""

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.enabled = mean is not None
        self.register_buffer("mean", torch.as_tensor(mean) if mean is not None else torch.zeros(1))
        self.register_buffer("std", torch.as_tensor(std) if std is not None else torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return (x - self.mean) / self.std
