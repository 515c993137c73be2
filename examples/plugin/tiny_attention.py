"""An example dmrnet plugin: a small self-attention encoder for feature vectors, `tiny-attn`.

Importing this module registers the encoder; a config then selects it by name:

    model:
      encoder: {name: tiny-attn, options: {token_size: 8, heads: 2}}

Use it with `dmrnet train CONFIG --import tiny_attention` (this folder on PYTHONPATH), or
install this folder (`pip install examples/plugin`): its pyproject.toml declares the module in
the `dmrnet.plugins` entry-point group, so every dmrnet command imports it. See docs/plugins.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dmrnet.nn import ENCODERS


class TinyAttentionEncoder(nn.Module):
    """Cuts a feature vector into tokens of `token_size` features (zero-padded), embeds them,
    applies one Transformer encoder layer and mean-pools the tokens into `out_features`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        token_size: int = 8,
        width: int = 32,
        heads: int = 2,
    ) -> None:
        super().__init__()
        self.token_size = token_size
        self.tokens = math.ceil(in_features / token_size)
        self.pad = self.tokens * token_size - in_features
        self.embed = nn.Linear(token_size, width)
        self.position = nn.Parameter(torch.zeros(self.tokens, width))
        self.layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.out = nn.Linear(width, out_features)
        self.out_features = out_features  # dmrnet's encoder interface

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.flatten(1), (0, self.pad))  # (B, T * token_size)
        tokens = self.embed(x.view(x.shape[0], self.tokens, self.token_size)) + self.position
        return self.out(self.layer(tokens).mean(1))  # (B, T, width) -> (B, out_features)


@ENCODERS.register("tiny-attn")
def build_tiny_attention(
    input_shape: tuple[int, ...], out_features: int, **options: Any
) -> nn.Module:
    return TinyAttentionEncoder(math.prod(input_shape), out_features, **options)
