"""Dense DMRNet for semantic segmentation, and its deterministic ModDrop baseline.

The paper's segmentation code builds DMRNet into ESANet (Seichter et al., ICRA 2021). dmrnet's
network is the same design, general in the number of modalities M:

    branch m (one ResNet per modality):  stem -> layer1 -> layer2 -> layer3 -> layer4
    fusion after the stem and every stage:   f_l = sum over m of mask_m * SE_m(x_m,l)
    the *primary* branch (the first modality: RGB in ESANet) continues from the fused map f_l,
        the other branches continue on their own features (ESANet's "fuse depth in RGB encoder")
    f_4 -> context module (pyramid pooling) -> [DMRNet: Gaussian embedding, z] -> decoder
    decoder: 3 modules [3x3 conv, non-bottleneck-1D blocks, learned x2 upsampling, + skip(f_l)]
             -> 3x3 conv to the classes -> learned upsampling to the input size
    multi-scale supervision: a 1x1-conv side output per decoder module, in training only

Absent modalities contribute nothing: their maps are zeroed before the squeeze-excitation gate
(SE(0) = 0), exactly as the paper's code multiplies every stage's output by the mask.

Encode/decode split. Because the primary branch runs on fused maps, part of the encoder depends
on the mask. `encode` runs what does not (every other branch, and the primary branch's stem) once
per batch; `decode(features, mask)` runs the fusion, the rest of the primary branch, the context
module, the embedding and the decoder. The evaluation's default `decode_many` loop therefore
re-runs only those parts per combination. With `fusion_feedback: false` no branch sees fused maps
(fusion only feeds the skips and the context module) and `encode` runs every branch completely.

DMRNet's dense embedding is the Gaussian head (dmrnet.nn.heads) on the context features: mu and
logvar heads (1x1 conv + BatchNorm), z = mu + eps * std sampled per pixel in training, z = mu in
evaluation, and a KL term averaged over batch and pixels *with* its gradient (the paper's code
detaches it). ModDrop's is the deterministic head (1x1 conv + BatchNorm). Dense HCR: the generic
variance- and loss-based rules use the per-sample loss (mean over valid pixels); the paper's own
segmentation rule is `hcr: {rule: incomplete, weight: 0.5, warmup_epochs: 11}` with
`auxiliary_decoder: true`: a second decoder, trained only on samples whose combination misses a
modality, from epoch 11 on (the paper's code: `epoch > 10`). It regularizes the shared encoder and
embedding; evaluation uses the main decoder.

With unimodal experts (`model.experts`, dmrnet-plus) every branch also gets a light decoder of its
own (`ExpertDecoder`) on its layer1..layer4 maps computed on its own input (with feedback the
primary branch runs its stages a second time, on its own stem, for them); `encode` computes those
maps, and the experts run once per batch for all combinations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from dmrnet.config import HCRConfig, ModelConfig, Strict
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError
from dmrnet.methods.base import METHODS, Method, MethodOutput, run_on_rows
from dmrnet.nn import ResNet, SqueezeExcitation
from dmrnet.nn.heads import (
    DeterministicHead,
    DeterministicHeadConfig,
    ExpertsSection,
    GaussianHead,
    GaussianHeadConfig,
)
from dmrnet.tasks import Task

Upsampling = Literal["learned", "bilinear", "nearest"]


# -- configuration --------------------------------------------------------------------------------
class ResNetOptions(Strict):
    """The options of a branch's ResNet (dmrnet.nn.resnet.ResNet)."""

    depth: Literal[10, 18, 34, 50] = 18
    width: int = Field(64, ge=1, description="base channels (64 = standard)")
    se: bool = Field(False, description="squeeze-excitation inside every residual block")
    stem: Literal["imagenet", "thin"] = Field("imagenet", description="imagenet: stride 4")


class ResNetBranchConfig(Strict):
    """A dense branch: always a ResNet (its stages are fused), so `name` is only `resnet`."""

    name: Literal["resnet"] = "resnet"
    options: ResNetOptions = Field(default_factory=ResNetOptions)


class DenseFusionConfig(ModelConfig):
    """Fields of the dense (segmentation) network shared by dmrnet-seg and moddrop-seg.

    `encoder.options` are the ResNet options of every branch (depth, width, se, stem);
    `encoders.<modality>` may override them per branch, as long as every branch has the same
    stage channels (fusion adds the maps). `embed_dim` is the channel count of the context
    features after the embedding, i.e. the decoder's input.
    """

    encoder: ResNetBranchConfig = Field(default_factory=ResNetBranchConfig)
    encoders: dict[str, ResNetBranchConfig] = Field(
        default_factory=dict, description="per-modality branch overrides"
    )
    embed_dim: int = Field(512, ge=1, description="channels of the embedding (decoder input)")
    decoder_channels: list[int] = Field(
        default_factory=lambda: [512, 256, 128],
        description="channels of the 3 decoder modules (ESANet 'decreasing')",
    )
    decoder_blocks: int = Field(3, ge=0, description="non-bottleneck-1D blocks per module")
    context_bins: list[int] = Field(
        default_factory=lambda: [1, 5], description="pyramid pooling bins (ESANet 'ppm': 1, 5)"
    )
    upsampling: Upsampling = Field(
        "learned", description="learned: nearest + 3x3 depthwise conv initialized bilinear"
    )
    multiscale: bool = Field(True, description="supervise every decoder module's side output")
    fusion_feedback: bool = Field(True, description="primary branch continues on fused maps")
    primary: str | None = Field(None, description="branch carrying the fused maps (default: first)")
    auxiliary_decoder: bool = Field(
        False, description="the HCR trains a second decoder on hard samples (paper's seg. rule)"
    )

    @field_validator("decoder_channels")
    @classmethod
    def _three_modules(cls, channels: list[int]) -> list[int]:
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError("give 3 positive channel counts, one per decoder module")
        return channels

    @field_validator("context_bins")
    @classmethod
    def _positive_bins(cls, bins: list[int]) -> list[int]:
        if not bins or min(bins) < 1:
            raise ValueError("give at least one positive bin size")
        return bins


class DMRNetSegConfig(DenseFusionConfig, GaussianHeadConfig, ExpertsSection):
    method: str = "dmrnet-seg"
    hcr: HCRConfig = Field(
        default_factory=lambda: HCRConfig(rule="incomplete", weight=0.5, warmup_epochs=11)
    )
    auxiliary_decoder: bool = True


class ModDropSegConfig(DenseFusionConfig, DeterministicHeadConfig, ExpertsSection):
    method: str = "moddrop-seg"


# -- building blocks ------------------------------------------------------------------------------
class ConvBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class NonBottleneck1D(nn.Module):
    """ERFNet's factorized residual block (3x1 and 1x3 convolutions), ESANet's decoder block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, (3, 1), padding=(1, 0)),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, (3, 1), padding=(1, 0)),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class Upsample(nn.Module):
    """Resize to a given size. "learned" (ESANet's learned-3x3-zeropad): nearest neighbour, then a
    depthwise 3x3 convolution initialized to the bilinear kernel and trained."""

    def __init__(self, channels: int, mode: Upsampling) -> None:
        super().__init__()
        self.mode = mode
        if mode == "learned":
            self.smooth = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
            kernel = torch.tensor([0.25, 0.5, 0.25])
            with torch.no_grad():
                self.smooth.weight.copy_(torch.outer(kernel, kernel).expand_as(self.smooth.weight))
                self.smooth.bias.zero_()

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=size, mode="nearest")
        return self.smooth(x) if self.mode == "learned" else x


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling as ESANet's context module: average-pool the map to each bin size,
    1x1 conv, upsample back, concatenate with the input, 1x1 conv to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        reduced = max(1, in_channels // len(bins))
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, reduced, 1))
            for b in bins
        )
        self.project = ConvBNReLU(in_channels + reduced * len(bins), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
            for branch in self.branches
        ]
        return self.project(torch.cat([x, *pooled], dim=1))


class MaskedSEFusion(nn.Module):
    """sum over modalities of mask_m * SE_m(x_m): ESANet's SE-add fusion, general in M. A map
    given as None (a branch nobody in the batch uses) contributes nothing."""

    def __init__(self, channels: int, count: int) -> None:
        super().__init__()
        self.gates = nn.ModuleList(SqueezeExcitation(channels) for _ in range(count))

    def forward(self, maps: Sequence[torch.Tensor | None], mask: torch.Tensor) -> torch.Tensor:
        fused: torch.Tensor | None = None
        for index, (gate, x) in enumerate(zip(self.gates, maps, strict=True)):
            if x is None:
                continue
            keep = mask[:, index].to(x.dtype).view(-1, 1, 1, 1)
            term = gate(x * keep)  # SE(0) = 0: an absent modality adds nothing
            fused = term if fused is None else fused + term
        if fused is None:
            raise ValueError("fusion needs at least one modality map")
        return fused


class DecoderModule(nn.Module):
    def __init__(
        self, in_channels: int, channels: int, blocks: int, upsampling: Upsampling, classes: int
    ) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, channels)
        self.blocks = nn.Sequential(*(NonBottleneck1D(channels) for _ in range(blocks)))
        self.side = nn.Conv2d(channels, classes, 1)
        self.upsample = Upsample(channels, upsampling)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor, side: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.blocks(self.conv(x))
        side_logits = self.side(x) if side else None
        return self.upsample(x, skip.shape[-2:]) + skip, side_logits


class Decoder(nn.Module):
    """Three decoder modules with additive skips, a 3x3 conv to the classes and learned
    upsampling to the input size (`final_steps` x2 steps, then exactly the input size)."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        blocks: int,
        upsampling: Upsampling,
        classes: int,
        final_steps: int,
    ) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.levels = nn.ModuleList(
            DecoderModule(widths[i], widths[i + 1], blocks, upsampling, classes) for i in range(3)
        )
        self.classify = nn.Conv2d(channels[-1], classes, 3, padding=1)
        self.upsample = nn.ModuleList(Upsample(classes, upsampling) for _ in range(final_steps))

    def forward(
        self, x: torch.Tensor, skips: Sequence[torch.Tensor], size: Sequence[int], sides: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        side_logits = []
        for module, skip in zip(self.levels, skips, strict=True):
            x, side = module(x, skip, sides)
            if side is not None:
                side_logits.append(side)
        logits = self.classify(x)
        # Intermediate sizes halve the target size rounding up, as the stride-2 convolutions did.
        steps = len(self.upsample)
        for index, upsample in enumerate(self.upsample):
            factor = 2 ** (steps - 1 - index)
            logits = upsample(logits, [math.ceil(s / factor) for s in size])
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return logits, side_logits


class ExpertDecoder(nn.Module):
    """A dense unimodal expert: one branch's own maps decoded the way the main decoder does it,
    lighter. From layer4, three steps of [3x3 conv + ReLU, upsampling to the next level, + that
    level's map (layer3, layer2, layer1) projected by a 1x1 conv], then a 3x3 conv to the classes
    at the stride of layer1 (`UnimodalExperts` resizes it to the input). No BatchNorm and no
    non-bottleneck blocks: the zero rows of samples without the modality move no statistics, and
    the cost stays a fraction of the main decoder's."""

    def __init__(self, stages: Sequence[int], channels: Sequence[int], classes: int) -> None:
        super().__init__()
        widths = [stages[3], *channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(3)
        )
        self.laterals = nn.ModuleList(
            nn.Conv2d(c, d, 1) for c, d in zip(reversed(stages[:3]), channels, strict=True)
        )
        self.classify = nn.Conv2d(channels[-1], classes, 3, padding=1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from the branch's layer1..layer4 maps."""
        x = levels[3]
        for conv, lateral, skip in zip(self.convs, self.laterals, levels[2::-1], strict=True):
            x = F.interpolate(F.relu(conv(x)), size=skip.shape[-2:], mode="bilinear")
            x = x + lateral(skip)
        return self.classify(F.relu(x))


def _stem_stride(net: ResNet) -> int:
    stride = 1
    for module in net.stem.modules():
        if isinstance(module, nn.Conv2d | nn.MaxPool2d):
            step = module.stride
            stride *= int(step[0] if isinstance(step, tuple) else step)
    return stride


@dataclass
class BranchMaps:
    """What `encode` computed: per modality, the maps of the levels that do not depend on the mask
    (level 0 = stem, 1..4 = stages); the primary branch holds only its stem with feedback."""

    maps: list[list[torch.Tensor | None]]
    size: tuple[int, int]  # input height and width
    batch: int
    all_rows: bool = False  # encoded without a presence mask: every row ran every branch (export)
    # Per modality, its branch's layer1..layer4 maps computed on its own input alone (the unimodal
    # experts' features; with feedback the primary branch runs its stages once more for them).
    own: list[list[torch.Tensor]] | None = None


# -- the network ----------------------------------------------------------------------------------
class DenseFusionMethod(Method):
    """The ESANet-style multi-branch encoder-decoder; the head (`head_class` of the registered
    methods) is the bottleneck between the context module and the decoder."""

    config: DenseFusionConfig
    config_class = DenseFusionConfig
    tasks = ("segmentation",)
    # Checkpoints written before the head component (dmrnet-seg, moddrop-seg).
    legacy_state_keys = (
        (r"^embedding\.", "head."),
        (r"^projection\.0\.", "head.proj."),
        (r"^projection\.1\.", "head.norm."),
    )

    def __init__(self, config: DenseFusionConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        names = self.modalities.names
        primary = config.primary or names[0]
        if primary not in names:
            raise ConfigError(f"model.primary: {primary!r} is not a modality ({'+'.join(names)})")
        self.primary = names.index(primary)
        self.feedback = config.fusion_feedback
        self.holes = dict(spec.extra.get("holes", {}))
        self.branches = nn.ModuleDict({name: self._build_branch(name) for name in names})
        channels = {name: branch.channels for name, branch in self.branches.items()}
        if len(set(channels.values())) != 1:
            raise ConfigError(
                f"model.encoders: every branch needs the same stage channels to be fused, got "
                f"{channels}"
            )
        stem_channels = {branch.stem[0].out_channels for branch in self.branches.values()}
        if len(stem_channels) != 1:
            raise ConfigError("model.encoders: every branch needs the same width to be fused")
        stages = list(next(iter(channels.values())))
        levels = [stem_channels.pop(), *stages]
        self.fusions = nn.ModuleList(MaskedSEFusion(c, len(names)) for c in levels)
        decoder_channels = config.decoder_channels
        # Skip projections on the fused maps of layer3, layer2, layer1 (ESANet's skip_layer3..1).
        self.skips = nn.ModuleList(
            ConvBNReLU(c, d, 1) if c != d else nn.Identity()
            for c, d in zip(reversed(stages[:3]), decoder_channels, strict=True)
        )
        self.context = PyramidPooling(stages[3], decoder_channels[0], config.context_bins)
        self.context_channels = decoder_channels[0]
        final_steps = round(math.log2(_stem_stride(self.branches[names[0]])))
        self.decoder = self._build_decoder(final_steps)
        self.auxiliary = self._build_decoder(final_steps) if config.auxiliary_decoder else None
        if self.auxiliary is not None and not self.hcr.enabled:
            raise ConfigError(
                "model.auxiliary_decoder: the auxiliary decoder trains on the HCR's hard samples; "
                "set model.hcr.rule (the paper: incomplete) and a weight > 0, or turn it off"
            )
        channels, embed = self.context_channels, config.embed_dim
        self.head = self.build_head(
            lambda: nn.Conv2d(channels, embed, 1),
            embed,
            expert=lambda: ExpertDecoder(stages, decoder_channels, spec.num_classes),
            dense=True,
        )

    def _build_branch(self, name: str) -> ResNet:
        choice = self.config.encoders.get(name, self.config.encoder)
        key = f"model.encoders.{name}" if name in self.config.encoders else "model.encoder"
        shape = tuple(self.spec.input_shapes[name])
        if len(shape) not in (2, 3):
            raise ConfigError(
                f"{key}: modality {name!r} has input shape {shape}; dense methods need image-like "
                "inputs (C, H, W) or (H, W)"
            )
        in_channels = shape[0] if len(shape) == 3 else 1
        return ResNet(in_channels=in_channels, **choice.options.model_dump())

    def _build_decoder(self, final_steps: int) -> Decoder:
        config = self.config
        return Decoder(
            config.embed_dim,
            config.decoder_channels,
            config.decoder_blocks,
            config.upsampling,
            self.spec.num_classes,
            final_steps,
        )

    # -- encode -----------------------------------------------------------------------------------
    def prepare(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) standardized input; pixels holding the dataset's hole value (e.g. depth 0:
        no measurement) become 0, the training mean, so a hole carries no signal."""
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        standardized = self.standardize[name](x)
        if name in self.holes:
            standardized = torch.where(x == self.holes[name], 0.0, standardized)
        return standardized

    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> BranchMaps:
        maps: list[list[torch.Tensor | None]] = []
        size: tuple[int, int] = (0, 0)
        batch = 0
        for index, name in enumerate(self.modalities.names):
            x = self.prepare(name, inputs[name])
            size, batch = (
                (int(x.shape[-2]), int(x.shape[-1])),
                x.shape[0],
            )  # batch: no int(), export keeps it dynamic
            rows = None if present is None else present[:, index]
            branch = self.branches[name]
            levels = [run_on_rows(branch.stem, x, rows, self.training)]
            if not (self.feedback and index == self.primary):
                for stage in branch.stages:
                    levels.append(run_on_rows(stage, levels[-1], rows, self.training))
            maps.append(levels)
        own = None
        if self.experts_in_use:  # not in evaluation without the product: no second pass
            own = [levels[1:] for levels in maps]
            if self.feedback:
                rows = None if present is None else present[:, self.primary]
                levels = [maps[self.primary][0]]
                for stage in self.branches[self.modalities.names[self.primary]].stages:
                    levels.append(run_on_rows(stage, levels[-1], rows, self.training))
                own[self.primary] = levels[1:]
        return BranchMaps(maps=maps, size=size, batch=batch, all_rows=present is None, own=own)

    def batch_size(self, features: BranchMaps) -> int:
        return features.batch

    # -- decode -----------------------------------------------------------------------------------
    def fuse(self, features: BranchMaps, mask: torch.Tensor) -> list[torch.Tensor]:
        """Fused maps of the 5 levels (stem, layer1..4) for a (B, M) mask."""
        primary_rows = None if features.all_rows else mask[:, self.primary]
        used = primary_rows is None or bool(primary_rows.any())
        branch = self.branches[self.modalities.names[self.primary]]
        fused: list[torch.Tensor] = []
        for level, fusion in enumerate(self.fusions):
            maps = [levels[level] if level < len(levels) else None for levels in features.maps]
            if self.feedback and level > 0 and used:
                # The primary branch continues from the previous fused map (ESANet).
                maps[self.primary] = run_on_rows(
                    branch.stages[level - 1], fused[-1], primary_rows, self.training
                )
            fused.append(fusion(maps, mask))
        return fused

    def decode(self, features: BranchMaps, mask: torch.Tensor) -> MethodOutput:
        output = self.decode_fused(features, mask)
        return self.with_experts(output, features.own, mask, size=features.size)

    def decode_many(self, features: BranchMaps, masks: torch.Tensor) -> list[MethodOutput]:
        """Every combination through the fused path; the unimodal experts, which do not depend on
        the mask, run once for all of them."""
        batch = features.batch
        outputs = [self.decode_fused(features, mask.expand(batch, -1)) for mask in masks]
        return self.with_experts_many(outputs, features.own, masks, size=features.size)

    def decode_fused(self, features: BranchMaps, mask: torch.Tensor) -> MethodOutput:
        """The fused network's output for a (B, M) mask (the prediction without the experts)."""
        fused = self.fuse(features, mask)
        skips = [project(f) for project, f in zip(self.skips, fused[3:0:-1], strict=True)]
        output = self.head(self.context(fused[4]))  # z: per-pixel sample in training, else mu
        z = output.logits
        sides = self.training and self.config.multiscale
        logits, side_logits = self.decoder(z, skips, features.size, sides)
        extras = dict(output.extras)
        extras.update({f"side/{i}": s for i, s in enumerate(side_logits)})
        if self.auxiliary is not None and self.training and self.hcr.active:
            aux_logits, aux_sides = self.auxiliary(z, skips, features.size, sides)
            extras["auxiliary"] = aux_logits
            extras.update({f"auxiliary/side/{i}": s for i, s in enumerate(aux_sides)})
        return MethodOutput(logits=logits, variance=output.variance, extras=extras)

    # -- losses -----------------------------------------------------------------------------------
    def _scales_loss(
        self,
        logits: torch.Tensor,
        extras: Mapping[str, torch.Tensor],
        prefix: str,
        target: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample loss of full-size logits plus every side output, each against the target
        resized by nearest neighbour (ESANet sums the scales with equal weights)."""
        per_sample = self.task.per_sample_loss(logits, target)
        index = 0
        while f"{prefix}{index}" in extras:
            side = extras[f"{prefix}{index}"]
            small = F.interpolate(target[:, None].float(), size=side.shape[-2:], mode="nearest")
            per_sample = per_sample + self.task.per_sample_loss(side, small[:, 0].long())
            index += 1
        return per_sample

    def task_loss(self, output: MethodOutput, target: torch.Tensor) -> torch.Tensor:
        return self._scales_loss(output.logits, output.extras, "side/", target)

    def hcr_task_loss(
        self, output: MethodOutput, target: torch.Tensor, per_sample: torch.Tensor
    ) -> torch.Tensor:
        if "auxiliary" not in output.extras:
            return per_sample
        return self._scales_loss(
            output.extras["auxiliary"], output.extras, "auxiliary/side/", target
        )


@METHODS.register("dmrnet-seg")
class DMRNetSeg(DenseFusionMethod):
    """DMRNet for dense prediction: the Gaussian head on the context features."""

    config: DMRNetSegConfig
    config_class = DMRNetSegConfig
    head_class = GaussianHead


@METHODS.register("moddrop-seg")
class ModDropSeg(DenseFusionMethod):
    """The same network with the deterministic head: 1x1 conv (+ BatchNorm), no sampling, no KL
    (the first rung of the paper's ablation ladder)."""

    config: ModDropSegConfig
    config_class = ModDropSegConfig
    head_class = DeterministicHead


__all__: list[Any] = [
    "DMRNetSeg",
    "DMRNetSegConfig",
    "DenseFusionConfig",
    "DenseFusionMethod",
    "ExpertDecoder",
    "ModDropSeg",
    "ModDropSegConfig",
]
