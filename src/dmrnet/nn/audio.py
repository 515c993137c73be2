"""Audio encoder: a ResNet on the 1-channel log-magnitude spectrogram.

The paper's audio-visual code (after OGM-GE) feeds `log(|STFT| + 1e-7)` of a clip, shaped
(1, frequency, time), to a ResNet whose first convolution takes one channel, global-average-pools
the last stage and fuses the pooled vector. dmrnet builds the same network from its own ResNet
(`dmrnet.nn.resnet`); `dmrnet.spectrograms` computes the spectrograms. Deliberate difference:
the paper's code calls its audio network "resnet18" but builds ResNet-34 depth (3-4-6-3 blocks);
here the depth is what the config says (`depth: 34` reproduces the paper's network).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dmrnet.nn.encoders import ENCODERS
from dmrnet.nn.resnet import ResNet


class SpectrogramEncoder(nn.Module):
    """(B, F, T) or (B, 1, F, T) log-spectrograms -> (B, out_features).

    ResNet (1 input channel) -> global average pooling -> Linear. The "imagenet" stem downsamples
    by 4 at once, as in the paper; the "thin" stem keeps the resolution of small spectrograms
    (e.g. 129 x 49 for 0.77 s at 8 kHz) for CPU-sized models.
    """

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
        if len(input_shape) == 3 and input_shape[0] == 1:
            input_shape = input_shape[1:]
        if len(input_shape) != 2:
            raise ValueError(
                f"audio encoder expects spectrograms of shape (frequency, time) or "
                f"(1, frequency, time), got {tuple(input_shape)}"
            )
        self.input_shape = tuple(input_shape)
        self.backbone = ResNet(depth=depth, in_channels=1, width=width, se=se, stem=stem)
        self.head = nn.Linear(self.backbone.channels[-1], out_features)
        self.out_features = out_features

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        if spectrogram.dim() == 3:
            spectrogram = spectrogram.unsqueeze(1)  # (B, F, T) -> (B, 1, F, T)
        return self.head(self.backbone(spectrogram))  # (B, out_features)


@ENCODERS.register("audio-resnet")
def build_audio_resnet(
    input_shape: tuple[int, ...], out_features: int, **options: Any
) -> nn.Module:
    """Options: depth (10/18/34/50), width (64 = standard), se, stem ("imagenet" or "thin")."""
    return SpectrogramEncoder(input_shape, out_features, **options)
