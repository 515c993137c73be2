"""Dedicated models: one model per modality combination, trained only on that combination.

The reference a single robust model is measured against: for every combination there is a
network that never has to cope with any other input. Each dedicated model is the ModDrop network
restricted to its modalities: one encoder per member modality,
masked-concat fusion, BatchNorm, linear classifier; it has its own parameters.

All dedicated models train side by side in one run: every training step feeds each model the
samples that have all of its modalities, and the loss is the sum of the models' losses, so every
model learns as if trained alone (Adam-type optimizers are per parameter). Two things are shared:
the learning-rate schedule and the checkpoint selection (the epoch with the best validation mean
over combinations), where separately trained models would each pick their own epoch.

There are 2^M - 1 combinations, so the number of models grows quickly. `model.combinations`
lists the combinations to train and `model.max_modalities` caps their size; a combination without
its own model is then predicted by the model of its largest trained sub-combination (ties: the
first in dmrnet's combination order), so every modality needs a model of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from dmrnet.config import SamplerConfig
from dmrnet.data.base import DataSpec
from dmrnet.errors import ConfigError
from dmrnet.methods.base import (
    METHODS,
    EncoderFusionConfig,
    LossOutput,
    Method,
    MethodOutput,
    build_encoders,
)
from dmrnet.modalities import Combination
from dmrnet.nn import DeterministicHead, DeterministicHeadConfig, MaskedLinearFusion
from dmrnet.tasks import Task


class DedicatedConfig(EncoderFusionConfig, DeterministicHeadConfig):
    method: str = "dedicated"
    combinations: list[str] | None = Field(
        None, description="the combinations that get a model (default: all 2^M - 1)"
    )
    max_modalities: int | None = Field(
        None, ge=1, description="only combinations of at most this many modalities get a model"
    )
    sampler: SamplerConfig = Field(
        default_factory=lambda: SamplerConfig(kind="full"),
        description="no dropout: each model sees its combination of every sample that has it",
    )


@dataclass
class DedicatedInputs:
    """What `encode` hands to `decode`: each model has its own encoders, so encoding happens per
    model inside `decode`; this holds the standardized inputs."""

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor  # (B, M)


class CombinationModel(nn.Module):
    """The ModDrop network on a fixed combination: encoders, then ModDrop's head (concat fusion,
    norm, classifier)."""

    def __init__(self, encoders: nn.ModuleDict, config: DedicatedConfig, classes: int) -> None:
        super().__init__()
        self.encoders = encoders
        count, dim, embed = len(encoders), config.feature_dim, config.embed_dim
        self.head = DeterministicHead(
            config,
            lambda: MaskedLinearFusion(count, dim, embed),
            embed,
            readout=lambda: nn.Linear(embed, classes),
        )

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        features = torch.stack(
            [encoder(inputs[name]) for name, encoder in self.encoders.items()], 1
        )
        everything = features.new_ones(features.shape[:2], dtype=torch.bool)  # (B, |c|)
        return self.head(features, everything).logits


@METHODS.register("dedicated")
class Dedicated(Method):
    config: DedicatedConfig
    config_class = DedicatedConfig
    # Checkpoints written before the head component.
    legacy_state_keys = (
        (r"^(models\.\d+\.)fusion\.", r"\1head.proj."),
        (r"^(models\.\d+\.)norm\.", r"\1head.norm."),
        (r"^(models\.\d+\.)classifier\.", r"\1head.readout."),
    )

    def __init__(self, config: DedicatedConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        self.reject_hcr("trains each model on its own combination")
        names = self.modalities.names
        self.trained = self._trained_combinations(config)
        self.models = nn.ModuleList(
            CombinationModel(
                build_encoders(config, spec, [names[i] for i in c]), config, spec.num_classes
            )
            for c in self.trained
        )
        # The model that predicts each combination of `modalities.combinations()`.
        self.register_buffer(
            "routes",
            torch.tensor([self._route(c) for c in self.modalities.combinations()]),
            persistent=False,
        )

    def _trained_combinations(self, config: DedicatedConfig) -> list[Combination]:
        if config.combinations is not None:
            chosen = []
            for i, text in enumerate(config.combinations):
                combination = self.parse_combination(text, f"model.combinations[{i}]")
                if combination in chosen:
                    raise ConfigError(f"model.combinations[{i}]: {text!r} is listed twice")
                chosen.append(combination)
        else:
            chosen = self.modalities.combinations()
        if config.max_modalities is not None:
            chosen = [c for c in chosen if len(c) <= config.max_modalities]
        alone = {c[0] for c in chosen if len(c) == 1}
        missing = [n for i, n in enumerate(self.modalities.names) if i not in alone]
        if missing:
            raise ConfigError(
                f"model.combinations: modality {missing[0]!r} has no model of its own, so "
                "combinations that contain it could not all be predicted; every modality needs "
                "its single-modality model"
            )
        order = self.modalities.combinations()
        return sorted(chosen, key=order.index)

    def _route(self, combination: Combination) -> int:
        """Index of the model for `combination`: its own, else its largest trained subset."""
        best = None
        for index, trained in enumerate(self.trained):
            if set(trained) <= set(combination) and (
                best is None or len(trained) > len(self.trained[best])
            ):
                best = index
        assert best is not None  # every single modality has a model (checked above)
        return best

    # -- the interface ----------------------------------------------------------------------
    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> DedicatedInputs:
        standardized = {
            name: self.standardize[name](inputs[name]) for name in self.modalities.names
        }
        batch = next(iter(standardized.values())).shape[0]
        if present is None:
            present = torch.ones(batch, len(self.modalities), dtype=torch.bool)
        return DedicatedInputs(standardized, present.to(next(iter(standardized.values())).device))

    def batch_size(self, features: DedicatedInputs) -> int:
        return int(features.present.shape[0])

    def _run(
        self, index: int, features: DedicatedInputs, rows: torch.Tensor | None
    ) -> torch.Tensor:
        model = self.models[index]
        inputs = {name: x if rows is None else x[rows] for name, x in features.inputs.items()}
        return model(inputs)

    def decode(self, features: DedicatedInputs, mask: torch.Tensor) -> MethodOutput:
        """Each sample is predicted by the model of its own combination."""
        mask = mask.bool()
        route = self.routes[self.modalities.combination_index(mask)]  # (B,)
        if self.training:
            return self._decode_for_training(features, mask, route)
        logits = None
        for index in torch.unique(route).tolist():
            rows = route == index
            out = self._run(index, features, rows)
            if logits is None:
                logits = out.new_zeros(mask.shape[0], *out.shape[1:])
            logits[rows] = out
        assert logits is not None
        return MethodOutput(logits=logits)

    def _decode_for_training(
        self, features: DedicatedInputs, mask: torch.Tensor, route: torch.Tensor
    ) -> MethodOutput:
        """Every model runs on all samples that have its combination (the loss trains them all);
        each sample's own prediction is taken from its model's output."""
        extras: dict[str, torch.Tensor] = {}
        logits = None
        for index, combination in enumerate(self.trained):
            usable = mask[:, list(combination)].all(-1)
            count = int(usable.sum())
            if count == 0:
                continue
            # BatchNorm cannot normalize a single sample: then the model runs on the whole batch
            # and keeps the usable row (as EncoderFusionMethod.encode does for its encoders).
            out = self._run(index, features, usable if count >= 2 else None)
            out = out if count >= 2 else out[usable]
            extras[f"model{index}/logits"] = out
            extras[f"model{index}/rows"] = usable
            own = route == index  # a subset of `usable`
            if bool(own.any()):
                if logits is None:
                    logits = out.new_zeros(mask.shape[0], *out.shape[1:])
                logits[own] = out[own[usable]]
        assert logits is not None
        return MethodOutput(logits=logits, extras=extras)

    def decode_many(self, features: DedicatedInputs, masks: torch.Tensor) -> list[MethodOutput]:
        """Each combination's model on the whole batch; a model that predicts several
        combinations (through the fallback route) runs once."""
        computed: dict[int, torch.Tensor] = {}
        outputs = []
        for index in self.routes[self.modalities.combination_index(masks)].tolist():
            if index not in computed:
                computed[index] = self._run(index, features, None)
            outputs.append(MethodOutput(logits=computed[index]))
        return outputs

    def loss(
        self,
        output: MethodOutput,
        target: torch.Tensor,
        mask: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> LossOutput:
        """Training: the sum over models of each model's mean loss on its samples. Evaluation:
        the loss of each sample's own prediction."""
        per_sample = self.task.per_sample_loss(output.logits, target)
        if not self.training:
            total = per_sample.mean()
            return LossOutput(total=total, terms={"task": total}, per_sample=per_sample)
        parts = [
            self.task.per_sample_loss(output.extras[f"model{i}/logits"], target[rows]).mean()
            for i in range(len(self.trained))
            if (rows := output.extras.get(f"model{i}/rows")) is not None
        ]
        total = torch.stack(parts).sum()
        return LossOutput(total=total, terms={"task": total}, per_sample=per_sample)
