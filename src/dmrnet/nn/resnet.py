"""ResNet family written for dmrnet (torchvision cannot be used here): BasicBlock and Bottleneck,
depths 18/34/50, a width multiplier, optional squeeze-excitation, any number of input channels,
and a thin stem for small CPU-sized inputs.

`ResNet.forward_stages(x)` returns the four stage outputs (strides 4, 8, 16, 32 with the
"imagenet" stem; 1, 2, 4, 8 with the "thin" stem), which the segmentation network and the
face-anti-spoofing network slice (stem..layer2 per modality, shared layer3..layer4).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dmrnet.nn.encoders import ENCODERS

DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al., CVPR 2018): global pool -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            SqueezeExcitation(channels) if se else nn.Identity(),
        )
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            SqueezeExcitation(out_channels) if se else nn.Identity(),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem + four stages; `channels` lists each stage's output channels."""

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 3,
        width: int = 64,
        se: bool = False,
        stem: Literal["imagenet", "thin"] = "imagenet",
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        kind, counts = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        if stem == "imagenet":
            # 7x7/2 conv + 3x3/2 max-pool: stride 4 before layer1 (He et al., 2016).
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        elif stem == "thin":
            # One 3x3/1 conv: keeps the resolution of small inputs (28x28 digits, spectrograms).
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"ResNet stem must be 'imagenet' or 'thin', got {stem!r}")
        stages, channels = [], []
        current = width
        for index, count in enumerate(counts):
            planes = width * 2**index
            blocks = []
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(current, planes, stride=stride, se=se))
                current = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
            channels.append(current)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels: tuple[int, ...] = tuple(channels)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, channels[-1]) after global average pooling."""
        return self.forward_stages(x)[-1].mean(dim=(2, 3))


class ResNetEncoder(nn.Module):
    """ResNet + global average pooling + Linear: a per-modality vector encoder."""

    def __init__(self, input_shape: tuple[int, ...], out_features: int, **options: Any) -> None:
        super().__init__()
        if len(input_shape) == 2:  # (H, W): a single-channel map such as a spectrogram
            input_shape = (1, *input_shape)
        if len(input_shape) != 3:
            raise ValueError(f"ResNet encoder expects (C, H, W) inputs, got shape {input_shape}")
        self.backbone = ResNet(in_channels=input_shape[0], **options)
        self.head = nn.Linear(self.backbone.channels[-1], out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        return self.head(self.backbone(x))


@ENCODERS.register("resnet")
def build_resnet(input_shape: tuple[int, ...], out_features: int, **options: Any) -> nn.Module:
    """Options: depth (10/18/34/50), width (base channels, 64 = standard), se, stem."""
    return ResNetEncoder(input_shape, out_features, **options)
