"""ShaSpec: shared and specific feature modelling (Wang, Chen, Liu, Hu, Cheng, Tian, Chen, Liu,
Carneiro; "Multi-modal Learning with Missing Modality via Shared-Specific Feature Modelling",
CVPR 2023, arXiv 2307.14126).

Every modality m is encoded twice: by its own *specific* encoder (p_m) and by one *shared*
encoder used for all modalities (s_m). The two are composed by a residual layer shared across
modalities, f_m = s_m + W_c [s_m; p_m]. A missing modality's feature is generated from what is
there: the mean of the shared features of the available modalities (the paper; the official
code takes the first available modality's shared feature instead). The M features are
concatenated and decoded (here: dmrnet's ModDrop head, Linear -> BatchNorm -> Linear).

Two auxiliary objectives shape the features:
- distribution alignment (DAO) on the shared features: the L1 distance between the shared
  features of every pair of modalities a sample uses (the official code sums the L1 distance over
  a cycle of modality pairs; dmrnet averages over all used pairs), weight `dao_weight` (the official
  code: 0.1);
- domain (modality) classification (DCO) on the specific features: a linear classifier must tell
  which modality a specific feature came from, cross-entropy, weight `dco_weight` (the official
  code: 0.02). Only the modalities a sample uses count (the official code also classifies the
  features of zeroed, missing inputs).

The shared encoder needs inputs of one shape. When the modalities' shapes differ (feature views of
different sizes), each modality first passes a linear adapter to `adapter_dim` values, the
"modality projector" of the DMRNet authors' re-implementation; with equal shapes it sees the
inputs directly, as in the paper.

The head is linear in the concatenated features and a generated feature is a mean of shared
features, so every combination is decoded exactly from one encoder pass and one projection per
(slot, modality) pair (`decode_many`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dmrnet.data.base import DataSpec
from dmrnet.methods.base import METHODS, EncoderFusionConfig, EncoderFusionMethod, MethodOutput
from dmrnet.nn import DeterministicHead, DeterministicHeadConfig, MaskedLinearFusion, build_encoder
from dmrnet.nn.fusion import eval_affine
from dmrnet.tasks import Task


class ShaSpecConfig(EncoderFusionConfig, DeterministicHeadConfig):
    method: str = "shaspec"
    dao_weight: float = Field(0.1, ge=0.0, description="distribution alignment (official: 0.1)")
    dco_weight: float = Field(0.02, ge=0.0, description="modality classification (official: 0.02)")
    adapter_dim: int = Field(
        256, ge=1, description="shared-encoder input width when modality shapes differ"
    )


@dataclass
class ShaSpecFeatures:
    shared: torch.Tensor  # (B, M, D) s_m, zero where a modality is absent
    specific: torch.Tensor  # (B, M, D) p_m, zero where a modality is absent


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@METHODS.register("shaspec")
class ShaSpec(EncoderFusionMethod):
    """`self.encoders` (from EncoderFusionMethod) are the specific encoders."""

    config: ShaSpecConfig
    config_class = ShaSpecConfig
    # ModDrop's head; `decode` opens it up to generate the missing modalities' features.
    head_class = DeterministicHead
    # Checkpoints written before the head component.
    legacy_state_keys = (
        (r"^fusion\.", "head.proj."),
        (r"^norm\.", "head.norm."),
        (r"^classifier\.", "head.readout."),
    )

    def __init__(self, config: ShaSpecConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        count, dim = len(self.modalities), config.feature_dim
        shapes = {tuple(spec.input_shapes[name]) for name in self.modalities.names}
        if len(shapes) == 1:
            shared_shape = next(iter(shapes))
            self.adapters = nn.ModuleDict({n: nn.Identity() for n in self.modalities.names})
        else:
            shared_shape = (config.adapter_dim,)
            self.adapters = nn.ModuleDict(
                {
                    n: nn.Sequential(
                        Flatten(), nn.Linear(math.prod(spec.input_shapes[n]), config.adapter_dim)
                    )
                    for n in self.modalities.names
                }
            )
        encoder = config.encoder
        self.shared_encoder = build_encoder(encoder.name, shared_shape, dim, encoder.options)
        self.compose = nn.Linear(2 * dim, dim)  # f_m = s_m + W_c [s_m; p_m], shared by all m
        embed = config.embed_dim
        self.head = self.build_head(
            lambda: MaskedLinearFusion(count, dim, embed),
            embed,
            readout=lambda: nn.Linear(embed, spec.num_classes),
        )
        self.modality_classifier = nn.Linear(dim, count)

    # -- encoders ---------------------------------------------------------------------------
    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> ShaSpecFeatures:
        specific = super().encode(inputs, present)  # (B, M, D)
        return ShaSpecFeatures(shared=self.encode_shared(inputs, present), specific=specific)

    def encode_shared(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None
    ) -> torch.Tensor:
        """One shared-encoder pass over the present rows of all modalities, stacked along the
        batch (its BatchNorm sees all modalities, as in the official code) -> (B, M, D)."""
        adapted, rows = [], []
        names = self.modalities.names
        if present is None:  # every row of every modality: no data-dependent shapes (export)
            x = torch.stack([self.adapters[n](self.standardize[n](inputs[n])) for n in names])
            encoded = self.shared_encoder(x.flatten(0, 1))  # (M * B, D)
            return encoded.unflatten(0, x.shape[:2]).transpose(0, 1)  # (B, M, D)
        for index, name in enumerate(names):
            x = self.adapters[name](self.standardize[name](inputs[name]))
            keep = present[:, index].to(x.device)
            adapted.append(x[keep])
            rows.append(keep)
        stacked = torch.cat(adapted)
        batch = rows[0].shape[0]
        shared = stacked.new_zeros(batch, len(rows), self.config.feature_dim)
        if stacked.shape[0] == 0:
            return shared
        encoded = self.shared_encoder(stacked)
        start = 0
        for index, keep in enumerate(rows):
            size = int(keep.sum())
            shared[keep, index] = encoded[start : start + size]
            start += size
        return shared

    def batch_size(self, features: ShaSpecFeatures) -> int:
        return int(features.shared.shape[0])

    # -- fusion -----------------------------------------------------------------------------
    def composed(self, features: ShaSpecFeatures) -> torch.Tensor:
        """f_m = s_m + W_c [s_m; p_m] for every modality: (B, M, D)."""
        shared = features.shared
        return shared + self.compose(torch.cat([shared, features.specific], dim=-1))

    @property
    def fusion(self) -> MaskedLinearFusion:
        return self.head.proj

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.head.readout(self.head.norm(fused))

    def _blocks(self) -> torch.Tensor:
        return self.fusion.weight.view(-1, len(self.modalities), self.config.feature_dim)

    def decode(self, features: ShaSpecFeatures, mask: torch.Tensor) -> MethodOutput:
        """mask (B, M): the fused pre-activation is sum over used m of W_m f_m plus, for every
        missing m, W_m applied to the mean shared feature of the used modalities."""
        used = mask.to(features.shared.dtype)  # (B, M)
        mean_shared = torch.einsum("bm,bmd->bd", used, features.shared) / used.sum(-1, True)
        projected = self.fusion.project(self.composed(features))  # (M, B, O)
        present_part = torch.einsum("bm,mbo->bo", used, projected)
        # (B, M, D): the missing slots' generated features; then one block per slot.
        generated = (1.0 - used).unsqueeze(-1) * mean_shared.unsqueeze(1)
        missing_part = torch.einsum("bmd,omd->bo", generated, self._blocks())
        output = MethodOutput(logits=self.classify(present_part + missing_part + self.fusion.bias))
        if self.training:
            output.extras.update(self.auxiliary_losses(features, used))
        return output

    def decode_many(self, features: ShaSpecFeatures, masks: torch.Tensor) -> list[MethodOutput]:
        """Every combination from per-modality and per-(slot, modality) terms. For combination c
        with n used modalities, the pre-activation is

            sum_{m in c} W_m f_m + sum_{m not in c} sum_{j in c} (1/n) W_m s_j + bias,

        and in evaluation BatchNorm and the classifier are affine too, so all terms are taken to
        the classifier's width first and each combination is one row of a matrix product."""
        used = masks.to(features.shared.dtype)  # (C, M)
        count, batch = masks.shape[0], features.shared.shape[0]
        modalities = masks.shape[1]
        contributions = self.fusion.project(self.composed(features))  # (M, B, O)
        # W_m s_j for every slot m and modality j: (M, M, B, O)
        crossed = torch.einsum("bjd,omd->mjbo", features.shared, self._blocks())
        constant = self.fusion.bias
        classifier = self.head.readout
        affine = eval_affine(self.head.norm)
        if affine is not None:  # evaluation: fold BatchNorm and the classifier in
            scale, shift = affine
            head = classifier.weight.t()
            contributions = (contributions * scale) @ head  # (M, B, K)
            crossed = (crossed * scale) @ head  # (M, M, B, K)
            constant = classifier(constant * scale + shift)
        width = contributions.shape[-1]
        rows = torch.cat(
            [
                contributions.reshape(modalities, -1),
                crossed.reshape(modalities * modalities, -1),
                constant.expand(batch, width).reshape(1, -1),
            ]
        )  # (M + M^2 + 1, B * width)
        generated = (1.0 - used).unsqueeze(2) * used.unsqueeze(1) / used.sum(-1).view(-1, 1, 1)
        selector = torch.cat(
            [used, generated.reshape(count, -1), used.new_ones(count, 1)], dim=1
        )  # (C, M + M^2 + 1)
        out = (selector @ rows).view(count, batch, width)
        logits = out if affine is not None else self.classify(out.flatten(0, 1))
        logits = logits.reshape(count, batch, -1)
        return [MethodOutput(logits=logits[c]) for c in range(count)]

    # -- auxiliary objectives ---------------------------------------------------------------
    def auxiliary_losses(
        self, features: ShaSpecFeatures, used: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Unweighted DAO and DCO of a training batch (used: (B, M) float mask)."""
        shared = features.shared
        count = used.shape[1]
        # DAO: mean |s_i - s_j| over feature elements, for every pair i < j both used.
        distance = (shared.unsqueeze(2) - shared.unsqueeze(1)).abs().mean(-1)  # (B, M, M)
        pairs = used.unsqueeze(2) * used.unsqueeze(1) * torch.ones(count, count).triu(1).to(used)
        dao = (distance * pairs).sum() / pairs.sum().clamp_min(1.0)
        # DCO: which modality did each used specific feature come from?
        rows = used.bool()
        labels = torch.arange(count, device=used.device).expand_as(rows)[rows]
        dco = F.cross_entropy(self.modality_classifier(features.specific[rows]), labels)
        return {"dao": dao, "dco": dco}

    def extra_losses(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        terms = super().extra_losses(output)
        if "dao" in output.extras:
            terms["dao"] = self.config.dao_weight * output.extras["dao"]
            terms["dco"] = self.config.dco_weight * output.extras["dco"]
        return terms
