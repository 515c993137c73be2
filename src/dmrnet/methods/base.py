"""The one interface every method implements, and the parts they share.

    features = method.encode(inputs, present)   # once per batch: per-modality encoders
    output   = method.decode(features, mask)    # fusion + head for one mask per sample
    outputs  = method.decode_many(features, masks)  # every combination in masks (C, M) at once
    loss     = method.loss(output, target, mask)

The engine, the evaluation and the CLI only use this interface; they never ask which method it is.
A method also owns its training-time modality sampler and its hard-combination regularizer, so a
baseline can use HCR too (the `moddrop-hcr` rung of the ablation ladder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dmrnet.config import ModelConfig
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError, DmrnetError
from dmrnet.methods.hcr import HardCombinationRegularizer
from dmrnet.modalities import CombinationSampler, ModalitySet
from dmrnet.nn import Standardize, build_encoder
from dmrnet.registry import Registry
from dmrnet.tasks import Task


@dataclass
class MethodOutput:
    logits: torch.Tensor
    # (B,) mean embedding variance of each sample (None for deterministic methods): the
    # uncertainty score that `predict` returns and the HCR's variance rules rank by.
    variance: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]  # the weighted parts of `total`, for logging
    per_sample: torch.Tensor  # (B,) task loss


class Method(nn.Module):
    """Base class of dmrnet's methods (DMRNet and the baselines)."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    provides_variance: ClassVar[bool] = False
    # The tasks (names in dmrnet.tasks.TASKS) whose outputs this method predicts: vectors of
    # class logits by default; dense methods predict label maps.
    tasks: ClassVar[tuple[str, ...]] = ("classification", "pad")

    def __init__(self, config: ModelConfig, spec: DataSpec, task: Task) -> None:
        super().__init__()
        if spec.task not in self.tasks:
            raise ConfigError(
                f"model.method: {config.method!r} predicts for tasks {', '.join(self.tasks)}, but "
                f"dataset {spec.name!r} has task {spec.task!r}; choose a method for that task"
            )
        self.config = config
        self.spec = spec
        self.task = task
        self.modalities: ModalitySet = spec.modalities
        stats = spec.input_stats or {}
        self.standardize = nn.ModuleDict(
            {name: Standardize(*stats.get(name, (None, None))) for name in self.modalities.names}
        )
        sampler = config.sampler
        self.sampler = CombinationSampler(
            self.modalities,
            kind=sampler.kind,
            p=sampler.p,
            fixed=self.parse_combination(sampler.combination, "model.sampler.combination")
            if sampler.combination
            else None,
        )
        self.hcr = HardCombinationRegularizer(
            config.hcr,
            self.modalities,
            has_variance=self.provides_variance,
            fixed=[
                self.parse_combination(text, f"model.hcr.combinations[{i}]")
                for i, text in enumerate(config.hcr.combinations)
            ],
        )

    # -- helpers for subclasses -------------------------------------------------------------
    def parse_combination(self, text: str, key: str) -> tuple[int, ...]:
        try:
            return self.modalities.parse(text)
        except DmrnetError as error:
            raise ConfigError(f"{key}: {error}") from None

    def build_encoders(self, out_features: int) -> nn.ModuleDict:
        """One encoder per modality from `model.encoder`, overridden by `model.encoders[name]`."""
        unknown = sorted(set(self.config.encoders) - set(self.modalities.names))
        if unknown:
            raise ConfigError(
                f"model.encoders.{unknown[0]}: not a modality of this dataset "
                f"({'+'.join(self.modalities.names)})"
            )
        encoders = {}
        for name in self.modalities.names:
            choice = self.config.encoders.get(name, self.config.encoder)
            encoders[name] = build_encoder(
                choice.name, self.spec.input_shapes[name], out_features, choice.options
            )
        return nn.ModuleDict(encoders)

    # -- the interface ----------------------------------------------------------------------
    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> Any:
        raise NotImplementedError

    def decode(self, features: Any, mask: torch.Tensor) -> MethodOutput:
        raise NotImplementedError

    def decode_many(self, features: Any, masks: torch.Tensor) -> list[MethodOutput]:
        """Decode every combination of `masks` (C, M) for the whole batch. Methods override this
        with a faster exact equivalent where their structure allows (see MaskedLinearFusion)."""
        batch = self.batch_size(features)
        return [self.decode(features, mask.expand(batch, -1)) for mask in masks]

    def batch_size(self, features: Any) -> int:
        return int(features.shape[0])

    def forward(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor) -> MethodOutput:
        return self.decode(self.encode(inputs, mask), mask)

    def training_mask(self, present: torch.Tensor) -> torch.Tensor:
        """The modalities each sample is trained with this step (modality dropout)."""
        return self.sampler.sample(present)

    def extra_losses(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        """Method-specific weighted loss terms (e.g. DMRNet's alpha * KL)."""
        return {}

    def task_loss(self, output: MethodOutput, target: torch.Tensor) -> torch.Tensor:
        """(B,) task loss of each sample. Methods with side outputs (deep supervision) add them."""
        return self.task.per_sample_loss(output.logits, target)

    def hcr_task_loss(
        self, output: MethodOutput, target: torch.Tensor, per_sample: torch.Tensor
    ) -> torch.Tensor:
        """(B,) loss the HCR adds on hard samples: the task loss, unless the method trains a
        head of its own for them (the paper's segmentation code: an auxiliary decoder)."""
        return per_sample

    def loss(self, output: MethodOutput, target: torch.Tensor, mask: torch.Tensor) -> LossOutput:
        """Task loss + method terms + beta * HCR, and (in training) feed the HCR statistics."""
        per_sample = self.task_loss(output, target)
        terms = {"task": per_sample.mean()}
        terms.update(self.extra_losses(output))
        combination = self.modalities.combination_index(mask)
        if self.training:
            self.hcr.observe(combination, per_sample.detach(), output.variance)
            hard_loss = self.hcr_task_loss(output, target, per_sample) if self.hcr.active else None
            hcr_loss = None if hard_loss is None else self.hcr.loss(combination, hard_loss)
            if hcr_loss is not None:
                terms["hcr"] = hcr_loss
        total = torch.stack(list(terms.values())).sum()
        return LossOutput(total=total, terms=terms, per_sample=per_sample)

    def start_epoch(self, epoch: int) -> dict[str, float]:
        return self.hcr.start_epoch(epoch)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Per-epoch bookkeeping; returns scalars to log (HCR statistics)."""
        return self.hcr.end_epoch(epoch)


class EncoderFusionMethod(Method):
    """Per-modality encoders to (B, M, D) features; subclasses fuse and classify them.

    Encoders see only the samples that really have their modality (absent inputs are placeholder
    zeros, and would otherwise skew the encoders' BatchNorm statistics); absent rows are zero.
    """

    def __init__(self, config: ModelConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        self.encoders = self.build_encoders(config.feature_dim)

    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = []
        for index, name in enumerate(self.modalities.names):
            x = self.standardize[name](inputs[name])
            rows = None if present is None else present[:, index]
            if rows is None or bool(rows.all()) or (self.training and int(rows.sum()) < 2):
                features.append(self.encoders[name](x))
            else:
                out = x.new_zeros(x.shape[0], self.config.feature_dim)
                if bool(rows.any()):
                    out[rows] = self.encoders[name](x[rows])
                features.append(out)
        return torch.stack(features, dim=1)  # (B, M, D)


METHODS: Registry[type[Method]] = Registry("method")


def build_method(config: ModelConfig, spec: DataSpec, task: Task) -> Method:
    return METHODS.get(config.method)(config, spec, task)


def decode_with(
    embed: Callable[[Callable[[nn.Module], torch.Tensor]], MethodOutput],
    features: torch.Tensor,
    masks: torch.Tensor,
) -> list[MethodOutput]:
    """Run a method's `embed(project)` once for all combinations and split the result by
    combination. `project(fusion)` returns the fused pre-activations of all (C * B) rows."""
    count, batch = masks.shape[0], features.shape[0]
    output = embed(lambda fusion: fusion.forward_many(features, masks).flatten(0, 1))
    logits = output.logits.unflatten(0, (count, batch))
    variance = None if output.variance is None else output.variance.unflatten(0, (count, batch))
    return [
        MethodOutput(logits=logits[c], variance=None if variance is None else variance[c])
        for c in range(count)
    ]
