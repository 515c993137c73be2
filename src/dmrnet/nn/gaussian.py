"""The Gaussian embedding's arithmetic (paper section 3.2): the KL term and the logvar bound.

The head that uses them (mu / logvar projections, sampling, the per-sample variance) is
`dmrnet.nn.heads.GaussianHead`.
"""

from __future__ import annotations

import torch

# logvar is clamped to [-LOGVAR_BOUND, LOGVAR_BOUND]: std stays in [e^-5, e^5], so exp() can
# neither overflow nor underflow in fp32/bf16; values in the trained range are untouched. The
# paper's code has no bound.
LOGVAR_BOUND = 10.0


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over embedding channels, averaged over the rest.

    Vectors (B, E): mean over the batch. Maps (B, E, H, W): mean over batch and pixels (the
    paper's dense variant). Unlike the paper's segmentation code, the gradient is kept.
    """
    per_element = 0.5 * (logvar.exp() + mu.pow(2) - logvar - 1.0)
    return per_element.sum(channel_dim).mean()
