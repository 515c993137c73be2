"""The probabilistic embedding of DMRNet (paper section 3.2).

Two parallel heads map the fused feature h to mu and logvar, each a projection followed by a
BatchNorm in the paper's code (`nn.Linear` + `nn.BatchNorm1d`, or 1x1 conv + `BatchNorm2d` for
feature maps). Training samples z = mu + eps * std (the reparameterization trick), evaluation uses
z = mu, and a KL term pulls N(mu, std^2) towards N(0, I).

dmrnet's knobs (shared/DESIGN.md section 1.7, measured): the norm on each head can be switched
off, and the logvar head can start from a negative bias (small initial noise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# logvar is clamped to [-LOGVAR_BOUND, LOGVAR_BOUND]: std stays in [e^-5, e^5], so exp() can
# neither overflow nor underflow in fp32/bf16; values in the trained range are untouched. The
# paper's code has no bound.
LOGVAR_BOUND = 10.0


@dataclass
class GaussianOutput:
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor

    def variance_per_sample(self) -> torch.Tensor:
        """(B,) mean of std^2 over a sample's embedding elements: the paper's hardness score."""
        return self.logvar.exp().flatten(1).mean(1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over embedding channels, averaged over the rest.

    Vectors (B, E): mean over the batch. Maps (B, E, H, W): mean over batch and pixels (the
    paper's dense variant). Unlike the paper's segmentation code, the gradient is kept.
    """
    per_element = 0.5 * (logvar.exp() + mu.pow(2) - logvar - 1.0)
    return per_element.sum(channel_dim).mean()


def _norm(dim: int, dense: bool) -> nn.Module:
    return nn.BatchNorm2d(dim) if dense else nn.BatchNorm1d(dim)


class GaussianEmbedding(nn.Module):
    """mu / logvar heads, reparameterized sampling in training, the mean in evaluation.

    `projection()` builds one head's projection (called twice: mu and logvar get their own).
    Vector embeddings are (N, dim); with `dense=True` they are maps (N, dim, H, W).
    """

    def __init__(
        self,
        projection: Callable[[], nn.Module],
        dim: int,
        mu_norm: bool = True,
        logvar_norm: bool = True,
        logvar_init_bias: float = 0.0,
        dense: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dense = dense
        self.mu_proj = projection()
        self.logvar_proj = projection()
        self.mu_norm = _norm(dim, dense) if mu_norm else nn.Identity()
        self.logvar_norm = _norm(dim, dense) if logvar_norm else nn.Identity()
        # The bias that sets the initial logvar: BatchNorm's shift when the head is normalized
        # (a projection bias would be cancelled by the normalization), else the projection's.
        initial = self.logvar_norm if logvar_norm else self.logvar_proj
        with torch.no_grad():
            initial.bias.fill_(logvar_init_bias)

    def heads(self, mu_pre: torch.Tensor, logvar_pre: torch.Tensor) -> GaussianOutput:
        """Normalize the projected features and sample. Accepts (N, dim) or (N, dim, H, W)."""
        mu = self.mu_norm(mu_pre)
        logvar = self.logvar_norm(logvar_pre).clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return GaussianOutput(mu=mu, logvar=logvar, z=z)

    def forward(self, *inputs: torch.Tensor) -> GaussianOutput:
        return self.heads(self.mu_proj(*inputs), self.logvar_proj(*inputs))

    def kl(self, output: GaussianOutput) -> torch.Tensor:
        return gaussian_kl(output.mu, output.logvar, channel_dim=1)
