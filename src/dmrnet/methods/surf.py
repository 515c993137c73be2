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

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import EncoderConfig, HCRConfig, ModelConfig
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError
from dmrnet.methods.base import METHODS, Method, MethodOutput
from dmrnet.nn import GaussianEmbedding, ResNet, SqueezeExcitation, gaussian_kl, masked_concat
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


class SurfDMRNetConfig(SurfConfig):
    method: str = "surf-dmrnet"
    kl_weight: float = Field(1e-3, ge=0.0, description="alpha; the paper's code uses 1e-3")
    kl_reduction: Literal["sum", "mean-pixels"] = Field(
        "sum",
        description="sum: KL summed over channels and locations (the paper's face-anti-spoofing "
        "code); mean-pixels: summed over channels, averaged over locations (its segmentation code)",
    )
    mu_norm: bool = Field(True, description="BatchNorm on the mu head (paper: yes)")
    logvar_norm: bool = Field(True, description="BatchNorm on the logvar head (paper: yes)")
    logvar_init_bias: float = Field(0.0, description="initial logvar (negative: little noise)")
    hcr: HCRConfig = Field(default_factory=lambda: HCRConfig(rule="unimodal-max"))


class SurfModDropConfig(SurfConfig):
    method: str = "surf-moddrop"
    projection: bool = Field(
        True, description="1x1 conv (+ BatchNorm) before pooling, as DMRNet's mu head"
    )
    mu_norm: bool = Field(True, description="BatchNorm on the projection")


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
    """Per-modality ResNet branches (encode) and the shared deeper layers (decode's trunk)."""

    config: SurfConfig

    def __init__(self, config: SurfConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        _reject_vector_encoder_fields(config)
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

    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, M, C, H, W): each modality's branch output (a sample's absent modalities are never
        used: `decode` masks them)."""
        maps = []
        for index, name in enumerate(self.modalities.names):
            x = self.standardize[name](inputs[name])
            rows = None if present is None else present[:, index]
            # Only samples that have the modality pass its branch (BatchNorm statistics), unless
            # too few do; rows of absent samples are masked out by `decode` either way.
            if rows is None or bool(rows.all()) or int(rows.sum()) < (2 if self.training else 1):
                maps.append(self.branches[name](x))
            else:
                kept = self.branches[name](x[rows])
                out = kept.new_zeros(x.shape[0], *kept.shape[1:])
                out[rows] = kept
                maps.append(out)
        return torch.stack(maps, dim=1)

    def trunk(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked concat of the branch maps, then the shared layer3 and layer4."""
        fused = masked_concat(features.unbind(1), mask)  # (B, M*C, H, W), absent maps zeroed
        return self.layer4(self.layer3(fused))  # (B, trunk_channels, h, w)


@METHODS.register("surf-dmrnet")
class SurfDMRNet(SurfNetwork):
    """DMRNet with the paper's face-anti-spoofing network: Gaussian heads per location."""

    config: SurfDMRNetConfig
    config_class = SurfDMRNetConfig
    provides_variance = True

    def __init__(self, config: SurfDMRNetConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        channels, dim = self.trunk_channels, config.embed_dim
        self.embedding = GaussianEmbedding(
            lambda: nn.Conv2d(channels, dim, kernel_size=1),
            dim,
            mu_norm=config.mu_norm,
            logvar_norm=config.logvar_norm,
            logvar_init_bias=config.logvar_init_bias,
            dense=True,
        )
        self.classifier = nn.Linear(dim, spec.num_classes)

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        gaussian = self.embedding(self.trunk(features, mask))  # maps (B, E, h, w)
        return MethodOutput(
            logits=self.classifier(gaussian.z.mean(dim=(2, 3))),  # pool z, then classify
            variance=gaussian.variance_per_sample(),  # mean std^2 over channels and locations
            extras={"mu": gaussian.mu, "logvar": gaussian.logvar},
        )

    def extra_losses(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        mu, logvar = output.extras["mu"], output.extras["logvar"]
        if self.config.kl_reduction == "sum":
            # The paper's code: sum over every element of the (E, h, w) map, mean over the batch.
            kl = gaussian_kl(mu.flatten(1), logvar.flatten(1))
        else:
            kl = gaussian_kl(mu, logvar, channel_dim=1)
        return {"kl": self.config.kl_weight * kl}


@METHODS.register("surf-moddrop")
class SurfModDrop(SurfNetwork):
    """ModDrop with the same network: no logvar head, no sampling, no KL."""

    config: SurfModDropConfig
    config_class = SurfModDropConfig

    def __init__(self, config: SurfModDropConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        if config.projection:
            self.projection: nn.Module = nn.Sequential(
                nn.Conv2d(self.trunk_channels, config.embed_dim, kernel_size=1),
                nn.BatchNorm2d(config.embed_dim) if config.mu_norm else nn.Identity(),
            )
            out_channels = config.embed_dim
        else:
            self.projection = nn.Identity()
            out_channels = self.trunk_channels
        self.classifier = nn.Linear(out_channels, spec.num_classes)

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        embedding = self.projection(self.trunk(features, mask))
        return MethodOutput(logits=self.classifier(embedding.mean(dim=(2, 3))))


def _reject_vector_encoder_fields(config: ModelConfig) -> None:
    """The vector methods' encoder fields mean nothing here; a set one is a mistake, say so."""
    problems: dict[str, Any] = {}
    if config.encoder != EncoderConfig():
        problems["model.encoder"] = config.encoder.name
    if config.encoders:
        problems["model.encoders"] = sorted(config.encoders)
    if config.feature_dim != ModelConfig.model_fields["feature_dim"].default:
        problems["model.feature_dim"] = config.feature_dim
    if problems:
        key, value = next(iter(problems.items()))
        raise ConfigError(
            f"{key}: {config.method!r} builds its own ResNet branches and ignores {key} "
            f"(got {value!r}); set model.depth, model.width, model.stem, model.branch_se or "
            "model.block_se instead"
        )
