"""The face-anti-spoofing network of the paper (`surf-resnet18se`), as DMRNet and as ModDrop.

The paper's code (DMRNet, face-antispoofing/models/surf_baseline.py,
`SURF_Baseline_ConvDUL_Auxi_Share`) fuses *mid-level maps*, not vectors:

    per modality:  ResNet-18 stem, layer1, layer2, squeeze-excitation   -> (B, 128, 14, 14) at 112
    masked concat of the M maps                                         -> (B, M*128, 14, 14)
    shared:        layer3, layer4                                       -> (B, 512, 4, 4)
    DMRNet:        mu / logvar heads, each 1x1 conv + BatchNorm, per location; z sampled per
                   element in training, z = mu in evaluation
    global average pooling, Linear -> 2 logits

In dmrnet the per-modality branches are `encode` and everything after them `decode`, so evaluating
all 2^M - 1 combinations runs the branches once per batch (the shared layers run per combination).
Any number of modalities works; the paper has three (RGB, depth, IR).

Where dmrnet differs from that code, on purpose: branches see only the samples that really have
their modality (the paper's data never misses one; a real missing input is a placeholder that would
skew BatchNorm), and the ModDrop variant keeps DMRNet's mu head as its projection so that the
ablation ladder changes one thing at a time (`projection: false` gives the paper code's
`SURF_Baseline`: layer4 -> pooling -> Linear).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import HCRConfig, ModelConfig
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError
from dmrnet.methods.base import METHODS, Method, MethodOutput, run_on_rows
from dmrnet.nn import ResNet, SqueezeExcitation, masked_concat
from dmrnet.nn.heads import (
    DeterministicHead,
    DeterministicHeadConfig,
    ExpertsSection,
    GaussianHead,
    GaussianHeadConfig,
    KLReduction,
    PooledLinear,
)
from dmrnet.nn.resnet import DEPTHS, BasicBlock, Bottleneck
from dmrnet.tasks import Task


class SurfConfig(ModelConfig):
    """Fields of the `surf-resnet18se` network, shared by its DMRNet and ModDrop variants."""

    method: str = "surf-dmrnet"
    depth: Literal[10, 18, 34, 50] = Field(18, description="ResNet depth (paper: 18)")
    width: int = Field(64, ge=1, description="ResNet base channels (64 = standard)")
    stem: Literal["imagenet", "thin"] = Field("imagenet", description="imagenet: stride 4")
    branch_se: bool = Field(True, description="squeeze-excitation on each branch's output (paper)")
    block_se: bool = Field(False, description="squeeze-excitation inside every residual block")
    embed_dim: int = Field(512, ge=1, description="channels of the embedding maps (paper: 512)")


class SurfDMRNetConfig(SurfConfig, GaussianHeadConfig, ExpertsSection):
    method: str = "surf-dmrnet"
    kl_reduction: KLReduction = Field(
        "sum",
        description="sum: KL summed over channels and locations (the paper's face-anti-spoofing "
        "code); mean-pixels: summed over channels, averaged over locations (its segmentation code)",
    )
    hcr: HCRConfig = Field(default_factory=lambda: HCRConfig(rule="unimodal-max"))


class SurfModDropConfig(SurfConfig, DeterministicHeadConfig, ExpertsSection):
    method: str = "surf-moddrop"
    projection: bool = Field(
        True, description="1x1 conv (+ BatchNorm) before pooling, as DMRNet's mu head"
    )


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_channels: int,
    planes: int,
    count: int,
    stride: int,
    se: bool,
) -> nn.Sequential:
    """`count` residual blocks, the first with `stride`: one ResNet stage with any input width."""
    blocks = []
    for index in range(count):
        blocks.append(block(in_channels, planes, stride=stride if index == 0 else 1, se=se))
        in_channels = planes * block.expansion
    stage = nn.Sequential(*blocks)
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return stage


class SurfNetwork(Method):
    """Per-modality ResNet branches (encode), the shared deeper layers (decode's trunk), then the
    head (`head_class` of the registered methods) per location, pooled into a classifier."""

    config: SurfConfig
    # Checkpoints written before the head component (surf-dmrnet, surf-moddrop).
    legacy_state_keys = (
        (r"^embedding\.", "head."),
        (r"^projection\.0\.", "head.proj."),
        (r"^projection\.1\.", "head.norm."),
        (r"^classifier\.", "head.readout."),
    )

    def __init__(self, config: SurfConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        kind, counts = DEPTHS[config.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        branches = {}
        for name in self.modalities.names:
            shape = tuple(spec.input_shapes[name])
            if len(shape) != 3:
                raise ConfigError(
                    f"model.method {config.method!r}: modality {name!r} has input shape {shape}; "
                    "this network needs images (channels, height, width)"
                )
            resnet = ResNet(
                config.depth,
                in_channels=shape[0],
                width=config.width,
                se=config.block_se,
                stem=config.stem,
            )
            branch_channels = resnet.channels[1]
            # The paper's branch: conv1, bn1, relu, maxpool, layer1, layer2, se_layer.
            branches[name] = nn.Sequential(
                resnet.stem,
                resnet.layer1,
                resnet.layer2,
                SqueezeExcitation(branch_channels) if config.branch_se else nn.Identity(),
            )
        sizes = {tuple(spec.input_shapes[name][1:]) for name in self.modalities.names}
        if len(sizes) > 1:
            raise ConfigError(
                f"model.method {config.method!r}: the modalities' maps are concatenated, so their "
                f"images need one height and width; got {dict(spec.input_shapes)}"
            )
        self.branches = nn.ModuleDict(branches)
        self.branch_channels = branch_channels
        count = len(self.modalities)
        # The paper's `layer3_new`: layer3 widened to take the M concatenated maps.
        self.layer3 = make_stage(
            block, count * branch_channels, config.width * 4, counts[2], 2, config.block_se
        )
        self.layer4 = make_stage(
            block,
            config.width * 4 * block.expansion,
            config.width * 8,
            counts[3],
            2,
            config.block_se,
        )
        self.trunk_channels = config.width * 8 * block.expansion
        projection, width = self.head_projection()
        classes = spec.num_classes
        self.head = self.build_head(
            projection,
            width,
            readout=lambda: PooledLinear(width, classes),  # pool z, then classify
            expert=lambda: PooledLinear(branch_channels, classes),  # on a branch's map
            dense=True,
            **self.head_options(),
        )

    def head_projection(self) -> tuple[Callable[[], nn.Module] | None, int]:
        """The head's projection (per location) and the embedding's channel count."""
        channels, embed = self.trunk_channels, self.config.embed_dim
        return (lambda: nn.Conv2d(channels, embed, kernel_size=1)), embed

    def head_options(self) -> dict[str, Any]:
        return {}

    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, M, C, H, W): each modality's branch output (a sample's absent modalities are never
        used: `decode` masks them)."""
        maps = []
        for index, name in enumerate(self.modalities.names):
            x = self.standardize[name](inputs[name])
            rows = None if present is None else present[:, index]
            maps.append(run_on_rows(self.branches[name], x, rows, self.training))
        return torch.stack(maps, dim=1)

    def trunk(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked concat of the branch maps, then the shared layer3 and layer4."""
        fused = masked_concat(features.unbind(1), mask)  # (B, M*C, H, W), absent maps zeroed
        return self.layer4(self.layer3(fused))  # (B, trunk_channels, h, w)

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        output = MethodOutput.of_head(self.head(self.trunk(features, mask)))
        return self.with_experts(output, list(features.unbind(1)), mask)


@METHODS.register("surf-dmrnet")
class SurfDMRNet(SurfNetwork):
    """DMRNet with the paper's face-anti-spoofing network: the Gaussian head per location."""

    config: SurfDMRNetConfig
    config_class = SurfDMRNetConfig
    head_class = GaussianHead

    def head_options(self) -> dict[str, Any]:
        return {"kl_reduction": self.config.kl_reduction}


@METHODS.register("surf-moddrop")
class SurfModDrop(SurfNetwork):
    """ModDrop with the same network: the deterministic head (no logvar head, no sampling, no KL);
    `projection: false` drops its 1x1 conv and norm (layer4 -> pooling -> Linear)."""

    config: SurfModDropConfig
    config_class = SurfModDropConfig
    head_class = DeterministicHead

    def head_projection(self) -> tuple[Callable[[], nn.Module] | None, int]:
        if self.config.projection:
            return super().head_projection()
        return None, self.trunk_channels
