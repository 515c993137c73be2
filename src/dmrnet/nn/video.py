"""Visual encoder for clips given as a few frames: a ResNet per frame, averaged over the frames.

The paper's audio-visual code runs its visual ResNet on every selected frame (the batch reshaped
to B*T images) and average-pools the last stage over time and space. Averaging the pooled frame
vectors and then applying one Linear is the same computation, so this encoder handles a single
image (C, H, W) and a frame stack (T, C, H, W) alike.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dmrnet.nn.encoders import ENCODERS
from dmrnet.nn.resnet import ResNet


class FrameSequenceEncoder(nn.Module):
    """(B, T, C, H, W) frame stacks or (B, C, H, W) images -> (B, out_features)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        out_features: int,
        depth: int = 18,
        width: int = 64,
        se: bool = False,
        stem: Literal["imagenet", "thin"] = "imagenet",
    ) -> None:
        super().__init__()
        if len(input_shape) not in (3, 4):
            raise ValueError(
                f"frame encoder expects (frames, channels, height, width) or (channels, height, "
                f"width) inputs, got {tuple(input_shape)}"
            )
        self.input_shape = tuple(input_shape)
        channels = input_shape[-3]
        self.backbone = ResNet(depth=depth, in_channels=channels, width=width, se=se, stem=stem)
        self.head = nn.Linear(self.backbone.channels[-1], out_features)
        self.out_features = out_features

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() == 4:
            frames = frames.unsqueeze(1)  # (B, C, H, W) -> (B, 1, C, H, W)
        batch, count = frames.shape[:2]
        pooled = self.backbone(frames.flatten(0, 1))  # (B * T, channels)
        pooled = pooled.unflatten(0, (batch, count)).mean(dim=1)  # (B, channels)
        return self.head(pooled)


@ENCODERS.register("frames-resnet")
def build_frames_resnet(
    input_shape: tuple[int, ...], out_features: int, **options: Any
) -> nn.Module:
    """Options: depth (10/18/34/50), width (64 = standard), se, stem ("imagenet" or "thin")."""
    return FrameSequenceEncoder(input_shape, out_features, **options)
