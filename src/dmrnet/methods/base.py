"""The one interface every method implements, and the parts they share.

    features = method.encode(inputs, present)   # once per batch: per-modality encoders
    output   = method.decode(features, mask)    # fusion + head for one mask per sample
    method.add_teacher(output, features, mask, present)  # training, with model.distill
    loss     = method.loss(output, target, mask, present)  # present: what each sample has
    outputs  = method.decode_many(features, masks)  # every combination in masks (C, M) at once

The engine, the evaluation and the CLI only use this interface; they never ask which method it is.
A method also owns its training-time modality sampler and its hard-combination regularizer, so a
baseline can use HCR too (the `moddrop-hcr` rung of the ablation ladder).

A method family (vector: `EncoderHeadMethod` here; dense: methods/dense.py; SURF: methods/surf.py)
is a backbone that ends in a head from dmrnet.nn.heads; its registered methods (DMRNet, ModDrop)
only choose the head (`head_class`) and its config section. The head's loss terms, its variance
and its one-pass decode of all combinations therefore come from one place for every backbone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import EncoderConfig, ModelConfig
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError, DmrnetError
from dmrnet.methods.hcr import HardCombinationRegularizer
from dmrnet.modalities import CombinationSampler, ModalitySet
from dmrnet.nn import MaskedLinearFusion, Standardize, build_encoder
from dmrnet.nn.heads import Head, HeadOutput, UnimodalExperts, distillation_loss
from dmrnet.registry import Registry
from dmrnet.tasks import Task


class EncodersConfig(ModelConfig):
    """Per-modality encoders that each give a feature vector (the vector methods)."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    encoders: dict[str, EncoderConfig] = Field(
        default_factory=dict, description="per-modality encoder overrides"
    )
    feature_dim: int = Field(128, ge=1, description="each encoder's output size")


class EncoderFusionConfig(EncodersConfig):
    """Per-modality encoders whose features are fused into one embedding."""

    embed_dim: int = Field(128, ge=1, description="fused embedding size")


@dataclass
class MethodOutput:
    logits: torch.Tensor
    # (B,) mean embedding variance of each sample (None for deterministic methods): the
    # uncertainty score that `predict` returns and the HCR's variance rules rank by.
    variance: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of_head(cls, output: HeadOutput) -> MethodOutput:
        return cls(logits=output.logits, variance=output.variance, extras=output.extras)


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
    # The head a family's registered method ends in (dmrnet.nn.heads); its config section is
    # part of `config_class`. It decides `provides_variance` and adds its loss terms.
    head_class: ClassVar[type[Head] | None] = None
    # (pattern, replacement) regexes that rename state_dict keys written before a module was
    # renamed, so checkpoints of earlier versions still load (applied at `load_state_dict`).
    legacy_state_keys: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.head_class is not None:
            cls.provides_variance = cls.head_class.provides_variance

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
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)

    def _rename_legacy_keys(self, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        if not self.legacy_state_keys:
            return
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix) :]
            for pattern, replacement in self.legacy_state_keys:
                renamed = re.sub(pattern, replacement, local, count=1)
                if renamed != local:
                    state_dict[prefix + renamed] = state_dict.pop(key)
                    break

    # -- helpers for subclasses -------------------------------------------------------------
    def parse_combination(self, text: str, key: str) -> tuple[int, ...]:
        try:
            return self.modalities.parse(text)
        except DmrnetError as error:
            raise ConfigError(f"{key}: {error}") from None

    def reject_hcr(self, reason: str) -> None:
        """For methods where a hard-combination regularizer cannot apply (`reason` says why)."""
        if self.config.hcr.rule != "none":
            raise ConfigError(
                f"model.hcr.rule: {self.config.method} {reason}, so a hard-combination "
                "regularizer does not apply; use rule 'none'"
            )

    def build_head(
        self,
        projection: Callable[[], nn.Module] | None,
        dim: int,
        readout: Callable[[], nn.Module] | None = None,
        expert: Callable[[], nn.Module] | None = None,
        **options: Any,
    ) -> Head:
        """The method's `head_class`, configured by the head's section of the method's config;
        `expert` builds one modality's readout of the unimodal experts (`model.experts`)."""
        assert self.head_class is not None, f"{type(self).__name__} declares no head_class"
        head = self.head_class(self.config, projection, dim, readout, **options)
        experts = getattr(self.config, "experts", None)  # families with an ExpertsSection
        if experts is not None and experts.weight > 0:
            if expert is None:
                raise ConfigError(
                    f"model.experts.weight: {self.config.method} has no unimodal experts; "
                    "set it to 0"
                )
            head.experts = UnimodalExperts(experts, [expert() for _ in self.modalities.names])
        return head

    @property
    def experts(self) -> UnimodalExperts | None:
        """The head's unimodal experts, None without them (or without a head)."""
        head = getattr(self, "head", None)
        return None if head is None else head.experts

    @property
    def experts_in_use(self) -> bool:
        """Whether this forward pass needs the experts: to train them, or for the product."""
        experts = self.experts
        return experts is not None and (self.training or experts.ensemble)

    def with_experts(
        self,
        output: MethodOutput,
        per_modality: Sequence[Any] | None,
        mask: torch.Tensor,
        size: tuple[int, int] | None = None,
    ) -> MethodOutput:
        """The experts' part of `decode`: their logits go to the loss in training; in evaluation
        the prediction becomes the product of experts (`model.experts.ensemble`)."""
        return self.with_experts_many([output], per_modality, mask[None], size)[0]

    def with_experts_many(
        self,
        outputs: list[MethodOutput],
        per_modality: Sequence[Any] | None,
        masks: torch.Tensor,
        size: tuple[int, int] | None = None,
    ) -> list[MethodOutput]:
        """`with_experts` for the outputs of several masks (C, M) or (C, B, M): the experts run
        once, each combination's product is a masked mean of their logits. `per_modality` may be
        None when the experts are not in use (`experts_in_use`)."""
        experts = self.experts
        if experts is None or not self.experts_in_use:
            return outputs
        assert per_modality is not None, "the experts are in use: encode gives their features"
        logits = experts(per_modality, size)
        if self.training:
            if masks.dim() == 2:  # (C, M): the same mask for every sample
                masks = masks[:, None, :].expand(-1, logits.shape[0], -1)
            for output, mask in zip(outputs, masks, strict=True):
                output.extras["experts"], output.extras["experts_mask"] = logits, mask
            return outputs
        # Every combination's product at once: (C, B, K, ...) from one broadcast.
        products = experts.combine(torch.stack([o.logits for o in outputs]), logits, masks)
        for output, product in zip(outputs, products, strict=True):
            output.logits = product
        return outputs

    def add_teacher(
        self, output: MethodOutput, features: Any, mask: torch.Tensor, present: torch.Tensor
    ) -> None:
        """Self-distillation (`model.distill`): in training, put the prediction from every
        modality each sample has in `output.extras["teacher"]`, decoded from the batch's features
        (encoded once, in training mode) in evaluation mode (the mean embedding, BatchNorm's
        running statistics, the product of experts when it is on) without gradient, with the rows
        whose drawn `mask` misses one of them (the only ones the term teaches)."""
        distill = getattr(self.config, "distill", None)  # families with an ExpertsSection
        if distill is None or distill.weight == 0 or not self.training:
            return
        rows = (mask != present).any(1)
        if not bool(rows.any()):
            return
        modes = [(module, module.training) for module in self.modules()]
        try:
            self.eval()
            with torch.no_grad():
                teacher = self.decode(features, present).logits
        finally:
            for module, mode in modes:
                module.training = mode
        output.extras["teacher"], output.extras["teacher_rows"] = teacher, rows

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
        """Method-specific weighted loss terms: the head's (e.g. DMRNet's alpha * KL) unless a
        method overrides this."""
        if self.head_class is None:
            return {}
        return self.head.losses(output.extras)

    def task_loss(self, output: MethodOutput, target: torch.Tensor) -> torch.Tensor:
        """(B,) task loss of each sample. Methods with side outputs (deep supervision) add them."""
        return self.task.per_sample_loss(output.logits, target)

    def hcr_task_loss(
        self, output: MethodOutput, target: torch.Tensor, per_sample: torch.Tensor
    ) -> torch.Tensor:
        """(B,) loss the HCR adds on hard samples: the task loss, unless the method trains a
        head of its own for them (the paper's segmentation code: an auxiliary decoder)."""
        return per_sample

    def loss(
        self,
        output: MethodOutput,
        target: torch.Tensor,
        mask: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> LossOutput:
        """Task loss + method terms + beta * HCR, and (in training) feed the HCR statistics.
        `present` (B, M): the modalities each sample really has (default: `mask`), on which
        the unimodal experts train when `model.experts.train_on` is `present`."""
        per_sample = self.task_loss(output, target)
        terms = {"task": per_sample.mean()}
        terms.update(self.extra_losses(output))
        if "experts" in output.extras:
            experts = self.experts
            assert experts is not None
            trained = output.extras["experts_mask"]
            if experts.train_on == "present" and present is not None:
                trained = present
            terms["unimodal"] = experts.loss(
                output.extras["experts"], trained, target, self.task.per_sample_loss
            )
        if "teacher" in output.extras:
            distill = self.config.distill
            terms["distill"] = distill.weight * distillation_loss(
                output.logits,
                output.extras["teacher"],
                output.extras["teacher_rows"],
                distill.temperature,
            )
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


def run_on_rows(
    module: nn.Module, x: torch.Tensor, rows: torch.Tensor | None, training: bool
) -> torch.Tensor:
    """module(x) computed on the rows that really have the input (`rows` (B,) bool); the other
    rows are zero. Placeholder inputs of absent samples would otherwise skew BatchNorm's
    statistics. In training fewer than 2 rows run with the whole batch: BatchNorm cannot
    normalize a single sample (and those rows are masked out later either way)."""
    if rows is None or bool(rows.all()) or (training and int(rows.sum()) < 2):
        return module(x)
    out = module(x[rows])  # in evaluation possibly no row: an empty batch
    full = out.new_zeros(x.shape[0], *out.shape[1:])
    full[rows] = out
    return full


def build_encoders(config: EncodersConfig, spec: DataSpec, names: Sequence[str]) -> nn.ModuleDict:
    """One encoder per modality in `names` from `model.encoder`, overridden by
    `model.encoders[name]`; an override for a modality the dataset lacks is a ConfigError."""
    unknown = sorted(set(config.encoders) - set(spec.modalities.names))
    if unknown:
        raise ConfigError(
            f"model.encoders.{unknown[0]}: not a modality of this dataset "
            f"({'+'.join(spec.modalities.names)})"
        )
    encoders = {}
    for name in names:
        choice = config.encoders.get(name, config.encoder)
        encoders[name] = build_encoder(
            choice.name, spec.input_shapes[name], config.feature_dim, choice.options
        )
    return nn.ModuleDict(encoders)


class EncoderFusionMethod(Method):
    """Per-modality encoders to (B, M, D) features; subclasses fuse and classify them.

    Encoders see only the samples that really have their modality (see `run_on_rows`); absent
    rows are zero.
    """

    config: EncodersConfig
    config_class = EncodersConfig

    def __init__(self, config: EncodersConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        self.encoders = build_encoders(config, spec, self.modalities.names)

    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> torch.Tensor:
        features = []
        for index, name in enumerate(self.modalities.names):
            x = self.standardize[name](inputs[name])
            rows = None if present is None else present[:, index]
            features.append(run_on_rows(self.encoders[name], x, rows, self.training))
        return torch.stack(features, dim=1)  # (B, M, D)


class EncoderHeadMethod(EncoderFusionMethod):
    """The vector family: encoders -> the head, whose projection is the masked concat fusion
    (`MaskedLinearFusion`) -> a linear classifier. DMRNet and ModDrop differ only in the head."""

    config: EncoderFusionConfig
    config_class = EncoderFusionConfig
    # Checkpoints written before the head component (methods/dmrnet.py, methods/moddrop.py).
    legacy_state_keys = (
        (r"^embedding\.", "head."),
        (r"^fusion\.", "head.proj."),
        (r"^norm\.", "head.norm."),
        (r"^classifier\.", "head.readout."),
    )

    def __init__(self, config: EncoderFusionConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        count, dim, embed = len(self.modalities), config.feature_dim, config.embed_dim
        self.head = self.build_head(
            lambda: MaskedLinearFusion(count, dim, embed),
            embed,
            readout=lambda: nn.Linear(embed, spec.num_classes),
            expert=lambda: nn.Linear(dim, spec.num_classes),
        )

    def decode(self, features: torch.Tensor, mask: torch.Tensor) -> MethodOutput:
        output = MethodOutput.of_head(self.head(features, mask))
        return self.with_experts(output, list(features.unbind(1)), mask)

    def decode_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[MethodOutput]:
        outputs = [MethodOutput.of_head(h) for h in self.head.forward_many(features, masks)]
        return self.with_experts_many(outputs, list(features.unbind(1)), masks)


METHODS: Registry[type[Method]] = Registry("method")


def build_method(config: ModelConfig, spec: DataSpec, task: Task) -> Method:
    return METHODS.get(config.method)(config, spec, task)
