"""Per-modality encoders, built by name from the encoder registry.

Every encoder is an `nn.Module` taking one modality's batch and exposing `out_features` (the size
of its output vector). Builders have the signature
`build(input_shape: tuple[int, ...], out_features: int, **options) -> nn.Module`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dmrnet.errors import ConfigError
from dmrnet.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")


class MLPEncoder(nn.Module):
    """Feature-vector encoder: [Linear -> BatchNorm -> ReLU -> Dropout] x len(hidden) -> Linear.

    The output has no activation: fusion and the Gaussian heads are linear in it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (256,),
        dropout: float = 0.1,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, d) -> (B, out_features)


@ENCODERS.register("mlp")
def build_mlp(input_shape: tuple[int, ...], out_features: int, **options: Any) -> nn.Module:
    in_features = 1
    for size in input_shape:
        in_features *= size
    return MLPEncoder(in_features, out_features, **options)


def build_encoder(
    name: str, input_shape: tuple[int, ...], out_features: int, options: dict[str, Any]
) -> nn.Module:
    """Build a registered encoder; bad options become a ConfigError naming the encoder."""
    builder = ENCODERS.get(name)
    try:
        return builder(tuple(input_shape), out_features, **options)
    except (TypeError, ValueError, RuntimeError) as error:
        # Unknown options (TypeError) and values torch refuses (a negative width, dropout > 1).
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"model.encoder: bad options {options} for {name!r}: {first}") from None
