"""Heads: what every backbone puts on its fused features, written once for all of them.

A backbone fuses its modalities into one input `h` of the head: (B, M, D) per-modality features and
a mask for the vector methods (the head's projection is then a `MaskedLinearFusion`, which does the
fusion), or one fused map (B, C, h, w) for the map backbones (a 1x1 convolution). Then:

    DeterministicHead (ModDrop):  z = norm(proj(h))
    GaussianHead (DMRNet, paper section 3.2):
        mu = norm_mu(proj_mu(h)), logvar = norm_logvar(proj_logvar(h))
        z = mu + eps * std in training (reparameterization), z = mu in evaluation
        loss term alpha * KL(N(mu, std^2) || N(0, I)); per-sample variance = mean std^2
    logits = readout(z)  (a classifier; the dense backbone's decoder takes z itself)

Each head has its own config section (`DeterministicHeadConfig`, `GaussianHeadConfig`). A family's
schema inherits the section of the head it uses, so its fields stay where configs have always
written them (`model.kl_weight`, `model.mu_norm`, ...), and a field added to a section reaches the
vector, dense and SURF backbones at once. The same holds for the head's behaviour: a backbone only
calls `head(h)` (or `head.forward_many` for every combination at once) and adds `head.losses`.

dmrnet's knobs (measured): the norm on each head can be switched off, and the logvar head can start
from a negative bias (small initial noise).

Unimodal experts (`model.experts`, both heads; the ingredients of the `dmrnet-plus` preset):
a task readout per modality on that modality's own features, trained with weight lambda_uni on
every modality each sample has (or, `train_on: combination`, only on those of its drawn training
combination), and, in evaluation, a product of experts:

    log p(y | S) = log softmax(fused logits) + w_S * mean over m in S of log softmax(expert_m)

(per pixel for maps). The experts' logits are per modality, so every combination's ensemble is a
masked mean of the same (B, M, K) tensor: the one-pass decode stays exact. The mixing weight w_S
is one buffer entry per combination, the configured `mix` until it is fitted on validation
(dmrnet.ensemble).

Self-distillation (`model.distill`, the same families): in training, the prediction from every
modality a sample has (evaluation mode, no gradient) teaches the prediction from its drawn subset,
T^2 * KL at temperature T, on the samples whose subset misses a modality.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dmrnet.config import Strict
from dmrnet.nn.fusion import MaskedLinearFusion, fused_many
from dmrnet.nn.gaussian import LOGVAR_BOUND, gaussian_kl

KLReduction = Literal["sum", "mean-pixels"]


class ExpertsConfig(Strict):
    """`model.experts`: unimodal auxiliary heads and the product-of-experts prediction."""

    weight: float = Field(
        0.0, ge=0.0, description="lambda_uni, the experts' task-loss weight; 0: no experts"
    )
    ensemble: bool = Field(
        False, description="predict with the product of the fused and the present experts"
    )
    mix: float = Field(
        1.0, ge=0.0, description="the experts' weight w in the product until fitted on validation"
    )
    train_on: Literal["present", "combination"] = Field(
        "present",
        description="each expert trains on every sample that has its modality (present) or only "
        "where it is in the sample's drawn training combination (combination)",
    )

    @model_validator(mode="after")
    def _ensemble_needs_experts(self) -> ExpertsConfig:
        if self.ensemble and self.weight == 0:
            raise ValueError("ensemble: true needs trained experts; set weight > 0")
        return self


class DistillConfig(Strict):
    """`model.distill`: self-distillation from each sample's full prediction to its subsets."""

    weight: float = Field(
        0.0, ge=0.0, description="weight of the distillation term (T^2 * KL); 0: off"
    )
    temperature: float = Field(2.0, gt=0.0, description="T of both softmaxes")


class ExpertsSection(Strict):
    """The `experts` and `distill` sections (the dmrnet-plus options), in the schema of every
    family whose head gets unimodal experts (the vector, dense and SURF families' DMRNet and
    ModDrop)."""

    experts: ExpertsConfig = Field(default_factory=ExpertsConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the classes (axis 1), averaged
    over the locations of maps and over the `rows` (B,) bool; 0 without any row (Hinton et al.,
    "Distilling the knowledge in a neural network", 2015: the T^2 keeps the gradient's scale)."""
    kl = F.kl_div(
        F.log_softmax(student / temperature, 1),
        F.log_softmax(teacher / temperature, 1),
        reduction="none",
        log_target=True,
    ).sum(1)
    per_sample = kl.flatten(1).mean(1) if kl.dim() > 1 else kl
    weights = rows.to(per_sample.dtype)
    return temperature**2 * (per_sample * weights).sum() / weights.sum().clamp(min=1)


class DeterministicHeadConfig(Strict):
    """Config section of `DeterministicHead`."""

    mu_norm: bool = Field(True, description="BatchNorm on the embedding (as DMRNet's mu head)")


class GaussianHeadConfig(Strict):
    """Config section of `GaussianHead`."""

    kl_weight: float = Field(1e-3, ge=0.0, description="alpha; the paper's code uses 1e-3")
    mu_norm: bool = Field(True, description="BatchNorm on the mu head (paper: yes)")
    logvar_norm: bool = Field(True, description="BatchNorm on the logvar head (paper: yes)")
    logvar_init_bias: float = Field(0.0, description="initial logvar (negative: little noise)")


@dataclass
class HeadOutput:
    logits: torch.Tensor  # readout(z); z itself when the head has no readout
    # (B,) mean of std^2 over a sample's embedding elements (the paper's hardness score); None for
    # a deterministic head.
    variance: torch.Tensor | None = None
    embedding: torch.Tensor | None = None  # z; None where the one-pass decode folds it away
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # what `losses` needs


class PooledLinear(nn.Linear):
    """Global average pooling of a map (B, C, h, w), then Linear: the SURF network's classifier."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.mean(dim=(2, 3)))


def present_mean(values: torch.Tensor, mask: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """Mean over the present modalities of per-modality values (B, M, ...): for a (B, M) mask
    (-> (B, ...)), for masks (C, B, M) of C combinations at once, or with `shared` for masks
    (C, M) that every sample shares (both -> (C, B, ...)). A row without any present modality
    gives 0."""
    weights = mask.to(values.dtype)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
    # One product over the modality axis: no (C, B, M, ...) intermediate.
    spec = "cm,bmr->cbr" if shared else "...bm,bmr->...br"
    mean = torch.einsum(spec, weights, values.flatten(2))
    return mean.unflatten(-1, values.shape[2:])


class UnimodalExperts(nn.Module):
    """A task readout per modality on its own features, and the product of experts with the fused
    prediction (see the module docstring). `mix` holds the experts' weight per combination,
    indexed by the combination's bit mask (entry 0, the empty set, unused)."""

    def __init__(self, config: ExpertsConfig, readouts: list[nn.Module]) -> None:
        super().__init__()
        self.weight = config.weight
        self.ensemble = config.ensemble
        self.train_on = config.train_on
        self.readouts = nn.ModuleList(readouts)
        count = len(readouts)
        self.register_buffer("mix", torch.full((2**count,), float(config.mix)))
        self.register_buffer("powers", 2 ** torch.arange(count), persistent=False)

    def forward(
        self, per_modality: Sequence[Any], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, M, K) logits of every modality's expert ((B, M, K, H, W) for maps, resized to
        `size` when given); `per_modality` holds what each readout takes (a tensor, or the dense
        experts' list of maps)."""
        logits = [readout(x) for readout, x in zip(self.readouts, per_modality, strict=True)]
        if size is not None:
            logits = [F.interpolate(x, size=size, mode="bilinear") for x in logits]
        return torch.stack(logits, dim=1)

    def combine(
        self, fused: torch.Tensor, experts: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """log softmax(fused) + w * mean of the present experts' log softmax, per sample, for
        experts (B, M, K, ...): fused (B, K, ...) with mask (B, M); or C combinations at once,
        fused (C, B, K, ...) with masks (C, B, M), or (C, M) shared by every sample."""
        many = fused.dim() == experts.dim()  # a leading combination axis
        shared = many and mask.dim() == 2
        weight = self.mix[(mask.long() * self.powers).sum(-1)]  # (B,), (C, B) or (C,)
        weight = weight.view(*weight.shape, *([1] * (fused.dim() - weight.dim())))
        experts = F.log_softmax(experts, 2)
        return F.log_softmax(fused, 2 if many else 1) + weight * present_mean(
            experts, mask, shared=shared
        )

    def loss(
        self,
        experts: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor,
        per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """lambda_uni * the task loss averaged over every (sample, modality of its combination)."""
        losses = torch.stack(
            [per_sample_loss(experts[:, m], target) for m in range(experts.shape[1])], dim=1
        )  # (B, M)
        weights = mask.to(losses.dtype)
        return self.weight * (losses * weights).sum() / weights.sum().clamp(min=1)

    def set_mix(self, weights: Mapping[tuple[int, ...], float]) -> None:
        """Set the weight of each combination (a tuple of modality indices)."""
        for combination, value in weights.items():
            self.mix[sum(1 << index for index in combination)] = value


def _norm(dim: int, dense: bool) -> nn.Module:
    return nn.BatchNorm2d(dim) if dense else nn.BatchNorm1d(dim)


class Head(nn.Module):
    """Base of the heads. `projection()` builds one projection (a head may need several);
    `readout()`, built last, maps z to logits; `dense` heads work on maps (B, E, h, w)."""

    config_class: ClassVar[type[Strict]]
    provides_variance: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        # Set by `Method.build_head` when `model.experts.weight` > 0.
        self.experts: UnimodalExperts | None = None

    def forward(self, *inputs: torch.Tensor) -> HeadOutput:
        raise NotImplementedError

    def forward_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[HeadOutput]:
        """Every combination of masks (C, M) at once, for a `MaskedLinearFusion` projection on
        features (B, M, D): exactly `forward(features, mask)` per combination, in one pass."""
        raise NotImplementedError

    def losses(self, extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The head's weighted loss terms, from the extras of its output."""
        return {}

    def _linear_readout(self) -> nn.Linear | None:
        """The readout when the one-pass decode can fold it (a Linear on vectors), else None."""
        readout = self.readout
        return readout if type(readout) is nn.Linear else None


class DeterministicHead(Head):
    """ModDrop's head: projection -> BatchNorm (optional) -> readout. Without a projection
    (`projection=None`) z is the input itself and there is no norm."""

    config_class = DeterministicHeadConfig

    def __init__(
        self,
        config: DeterministicHeadConfig,
        projection: Callable[[], nn.Module] | None,
        dim: int,
        readout: Callable[[], nn.Module] | None = None,
        dense: bool = False,
    ) -> None:
        super().__init__()
        self.proj = projection() if projection is not None else nn.Identity()
        use_norm = config.mu_norm and projection is not None
        self.norm = _norm(dim, dense) if use_norm else nn.Identity()
        self.readout = readout() if readout is not None else nn.Identity()

    def forward(self, *inputs: torch.Tensor) -> HeadOutput:
        embedding = self.norm(self.proj(*inputs))
        return HeadOutput(logits=self.readout(embedding), embedding=embedding)

    def forward_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[HeadOutput]:
        assert isinstance(self.proj, MaskedLinearFusion)
        readout = self._linear_readout()
        logits = fused_many(self.proj, self.norm, features, masks, head=readout)
        if readout is None:
            logits = self.readout(logits.flatten(0, 1)).unflatten(0, logits.shape[:2])
        return [HeadOutput(logits=x) for x in logits]


class GaussianHead(Head):
    """DMRNet's head: mu and logvar projections (each its own), optional BatchNorms, sampling in
    training and the mean in evaluation, the KL term and the per-sample variance.

    `kl_reduction` for maps: "mean-pixels" sums the KL over channels and averages it over batch and
    locations (the paper's segmentation code); "sum" sums it over channels and locations (its
    face-anti-spoofing code). Vectors: both sum over channels and average over the batch.
    """

    config_class = GaussianHeadConfig
    provides_variance = True

    def __init__(
        self,
        config: GaussianHeadConfig,
        projection: Callable[[], nn.Module],
        dim: int,
        readout: Callable[[], nn.Module] | None = None,
        dense: bool = False,
        kl_reduction: KLReduction = "mean-pixels",
    ) -> None:
        super().__init__()
        self.kl_weight = config.kl_weight
        self.kl_reduction = kl_reduction
        self.mu_proj = projection()
        self.logvar_proj = projection()
        self.mu_norm = _norm(dim, dense) if config.mu_norm else nn.Identity()
        self.logvar_norm = _norm(dim, dense) if config.logvar_norm else nn.Identity()
        # The bias that sets the initial logvar: BatchNorm's shift when the head is normalized
        # (a projection bias would be cancelled by the normalization), else the projection's.
        initial = self.logvar_norm if config.logvar_norm else self.logvar_proj
        with torch.no_grad():
            initial.bias.fill_(config.logvar_init_bias)
        self.readout = readout() if readout is not None else nn.Identity()

    def sample(self, mu_pre: torch.Tensor, logvar_pre: torch.Tensor) -> HeadOutput:
        """Normalize the projected (N, E) or (N, E, h, w) features, sample z, read out."""
        mu = self.mu_norm(mu_pre)
        logvar = self.logvar_norm(logvar_pre).clamp(-LOGVAR_BOUND, LOGVAR_BOUND)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return HeadOutput(
            logits=self.readout(z),
            variance=logvar.exp().flatten(1).mean(1),
            embedding=z,
            extras={"mu": mu, "logvar": logvar},
        )

    def forward(self, *inputs: torch.Tensor) -> HeadOutput:
        return self.sample(self.mu_proj(*inputs), self.logvar_proj(*inputs))

    def forward_many(self, features: torch.Tensor, masks: torch.Tensor) -> list[HeadOutput]:
        assert isinstance(self.mu_proj, MaskedLinearFusion)
        assert isinstance(self.logvar_proj, MaskedLinearFusion)
        count, batch = masks.shape[0], features.shape[0]
        readout = self._linear_readout()
        if self.training or readout is None:  # sampling (or a readout that does not fold)
            output = self.sample(
                self.mu_proj.forward_many(features, masks).flatten(0, 1),
                self.logvar_proj.forward_many(features, masks).flatten(0, 1),
            )
            logits = output.logits.unflatten(0, (count, batch))
            variance = output.variance.unflatten(0, (count, batch))
        else:
            # Evaluation predicts from mu; mu -> logits is affine, so it folds (see fused_many).
            logits = fused_many(self.mu_proj, self.mu_norm, features, masks, head=readout)
            logvar = fused_many(self.logvar_proj, self.logvar_norm, features, masks)
            # In place: this (C, B, E) tensor is the largest of the evaluation.
            variance = logvar.clamp_(-LOGVAR_BOUND, LOGVAR_BOUND).exp_().mean(-1)  # (C, B)
        return [HeadOutput(logits=x, variance=v) for x, v in zip(logits, variance, strict=True)]

    def losses(self, extras: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mu, logvar = extras["mu"], extras["logvar"]
        if self.kl_reduction == "sum":
            # Sum over every element of the (E, h, w) map, mean over the batch.
            mu, logvar = mu.flatten(1), logvar.flatten(1)
        return {"kl": self.kl_weight * gaussian_kl(mu, logvar)}
