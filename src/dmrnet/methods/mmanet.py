"""MMANet: margin-aware distillation and modality-aware regularization (Wei, Luo, Luo; CVPR 2023,
"MMANet: Margin-aware Distillation and Modality-aware Regularization for Incomplete Multimodal
Learning"; the DMRNet authors' previous method).

Two networks of the same architecture (dmrnet's ModDrop network: per-modality encoders, masked
concat fusion, BatchNorm, linear classifier; the teacher is a `ModDrop` instance), trained in two
stages that `dmrnet train` runs in turn (methods/stages.py):

1. **teacher**: trained on complete multimodal data (no modality dropout); its best checkpoint is
   chosen on the validation full-modality accuracy (`val/full`).
2. **student** (the deployed network): trained with modality dropout (`model.sampler`) and, after
   `warmup_epochs`, two extra terms (paper Eq. 14; the official code switches both on after
   `begin_epoch` = 5):
   - **MAD** (margin-aware distillation): similarity-preserving distillation (Tung and Mori, ICCV
     2019) from the frozen teacher, which sees every available modality, to the student, which
     sees the dropped-out input: the row-normalized batch similarity matrices G = normalize(F F^T)
     of the two embeddings are matched, each sample's row weighted by the teacher's prediction
     entropy normalized over the batch (uncertain samples, near the decision boundary, count
     more; official code: `loss/kd/mad.py`). Weight `distill_weight` (official SURF script: 30).
   - **MAR** (modality-aware regularization): the weak combination is mined during the warm-up:
     among the combinations that miss one modality (for two modalities: the single ones), the one
     whose predicted-label distribution is furthest (KL) from the full set's (paper Eq. 9-13). Its
     modalities are the weak ones; each gets a unimodal auxiliary classifier on its student
     feature with an extra task loss on the samples that use it, sum / batch size, weight
     `mar_weight` (official SURF script: 0.5).

dmrnet differs from the official code where that code is specific to three modalities or to its
data: the label distributions are accumulated from the student's training predictions (the
official code evaluates the test set each warm-up epoch) with add-one smoothing, the KL is taken
between the distributions themselves (the official code applies a softmax to them first), and the
MAR loss of a weak modality applies to every sample that uses it (the official code pairs each
auxiliary classifier with a fixed entry of its weak-combination list).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dmrnet.config import SamplerConfig
from dmrnet.data.base import DataSpec
from dmrnet.methods.base import (
    METHODS,
    EncoderFusionConfig,
    EncoderFusionMethod,
    LossOutput,
    MethodOutput,
)
from dmrnet.methods.moddrop import ModDrop, ModDropConfig
from dmrnet.methods.stages import TrainingStage
from dmrnet.nn import DeterministicHead, DeterministicHeadConfig, MaskedLinearFusion
from dmrnet.tasks import Task

log = logging.getLogger("dmrnet")

TEACHER, STUDENT = 0, 1
STAGES = ("teacher", "student")


class MMANetConfig(EncoderFusionConfig, DeterministicHeadConfig):
    method: str = "mmanet"
    teacher_epochs: int | None = Field(None, ge=1, description="default: train.epochs")
    distill_weight: float = Field(30.0, ge=0.0, description="MAD weight (official SURF: 30)")
    mar_weight: float = Field(0.5, ge=0.0, description="MAR weight (official SURF: 0.5)")
    warmup_epochs: int = Field(
        5, ge=1, description="student epochs before MAD and MAR (official begin_epoch: 5)"
    )


@dataclass
class MMANetFeatures:
    features: torch.Tensor  # (B, M, D) of the network being trained or deployed
    teacher_embedding: torch.Tensor | None = None  # (B, E), only in student training
    teacher_logits: torch.Tensor | None = None  # (B, K)


def similarity(features: torch.Tensor) -> torch.Tensor:
    """Row-normalized batch similarity matrix of (B, ...) features (similarity-preserving KD)."""
    flat = features.flatten(1)
    return F.normalize(flat @ flat.t(), p=2, dim=1)


def margin_aware_distillation(
    student: torch.Tensor, teacher: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """sum_i w_i * sum_j (G_s - G_t)_ij^2 with w_i = H_i / sum_k H_k, H the entropy of the
    teacher's prediction for sample i (the official `MAD` module)."""
    probabilities = teacher_logits.softmax(-1)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)  # (B,)
    weights = entropy / entropy.sum().clamp_min(1e-12)
    difference = (similarity(student) - similarity(teacher)).square().sum(1)  # (B,)
    return (weights * difference).sum()


@METHODS.register("mmanet")
class MMANet(EncoderFusionMethod):
    """`self.encoders` and `self.student` form the deployed network; `self.teacher` the teacher."""

    config: MMANetConfig
    config_class = MMANetConfig
    # Checkpoints written before the head component (the teacher's keys: ModDrop's rules).
    legacy_state_keys = (
        (r"^student\.fusion\.", "student.proj."),
        (r"^student\.classifier\.", "student.readout."),
    )

    def __init__(self, config: MMANetConfig, spec: DataSpec, task: Task) -> None:
        super().__init__(config, spec, task)
        count, dim, classes = len(self.modalities), config.feature_dim, spec.num_classes
        embed = config.embed_dim
        # The student's head is ModDrop's: masked concat fusion -> BatchNorm -> classifier.
        self.student = DeterministicHead(
            config,
            lambda: MaskedLinearFusion(count, dim, embed),
            embed,
            readout=lambda: nn.Linear(embed, classes),
        )
        self.auxiliary = nn.ModuleDict({n: nn.Linear(dim, classes) for n in self.modalities.names})
        # The teacher is a ModDrop network of the same architecture that never drops modalities.
        teacher_config = ModDropConfig(
            encoder=config.encoder,
            encoders=config.encoders,
            feature_dim=dim,
            embed_dim=config.embed_dim,
            mu_norm=config.mu_norm,
            sampler=SamplerConfig(kind="full"),
        )
        self.teacher = ModDrop(teacher_config, spec, task)
        # A freshly built model is in the student (deployment) stage; checkpoints store the stage.
        self.register_buffer("stage", torch.tensor(STUDENT))
        self.register_buffer("epoch", torch.tensor(0))
        combinations = self.modalities.combinations()
        self.register_buffer("label_counts", torch.zeros(len(combinations), classes))
        self.register_buffer("weak", torch.zeros(count, dtype=torch.bool))
        self.candidates = [
            i for i, c in enumerate(combinations) if len(c) == max(1, count - 1) and count > 1
        ]
        self.full_index = combinations.index(self.modalities.full)

    # -- stages -----------------------------------------------------------------------------
    def training_stages(self, epochs: int) -> list[TrainingStage]:
        teacher = self.config.teacher_epochs or epochs
        return [
            TrainingStage("teacher", teacher, monitor="val/full"),
            TrainingStage("student", epochs),
        ]

    def begin_stage(self, name: str) -> None:
        stage = STAGES.index(name)
        self.stage.fill_(stage)
        teacher_params = set(self.teacher.parameters())
        for parameter in self.parameters():
            parameter.requires_grad_((parameter in teacher_params) == (stage == TEACHER))
        self.train(self.training)

    @property
    def in_teacher_stage(self) -> bool:
        return int(self.stage) == TEACHER

    def train(self, mode: bool = True) -> MMANet:
        super().train(mode)
        if not self.in_teacher_stage:
            self.teacher.eval()  # frozen: its BatchNorm statistics must not move
        return self

    def training_mask(self, present: torch.Tensor) -> torch.Tensor:
        if self.in_teacher_stage:
            return present.clone()  # the teacher learns from complete multimodal data
        return super().training_mask(present)

    # -- the interface ----------------------------------------------------------------------
    def encode(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor | None = None
    ) -> MMANetFeatures:
        if self.in_teacher_stage:
            return MMANetFeatures(self.teacher.encode(inputs, present))
        features = MMANetFeatures(super().encode(inputs, present))
        if self.training and self.distilling:
            with torch.no_grad():  # the teacher sees every modality the sample has
                teacher = self.teacher.encode(inputs, present)
                available = (
                    present
                    if present is not None
                    else torch.ones(teacher.shape[:2], dtype=torch.bool, device=teacher.device)
                )
                head = self.teacher.head(teacher, available)
            features.teacher_embedding = head.embedding
            features.teacher_logits = head.logits
        return features

    def batch_size(self, features: MMANetFeatures) -> int:
        return int(features.features.shape[0])

    def decode(self, features: MMANetFeatures, mask: torch.Tensor) -> MethodOutput:
        if self.in_teacher_stage:
            return self.teacher.decode(features.features, mask)
        head = self.student(features.features, mask)
        output = MethodOutput(logits=head.logits)
        if self.training:
            output.extras["unimodal_logits"] = torch.stack(
                [
                    self.auxiliary[n](features.features[:, i])
                    for i, n in enumerate(self.modalities.names)
                ],
                dim=1,
            )
            if features.teacher_embedding is not None:
                output.extras["embedding"] = head.embedding
                output.extras["teacher_embedding"] = features.teacher_embedding
                output.extras["teacher_logits"] = features.teacher_logits
        return output

    def decode_many(self, features: MMANetFeatures, masks: torch.Tensor) -> list[MethodOutput]:
        if self.in_teacher_stage:
            return self.teacher.decode_many(features.features, masks)
        return [
            MethodOutput.of_head(h) for h in self.student.forward_many(features.features, masks)
        ]

    # -- losses -----------------------------------------------------------------------------
    @property
    def distilling(self) -> bool:
        """MAD and MAR are on: student stage, after the warm-up."""
        return not self.in_teacher_stage and int(self.epoch) >= self.config.warmup_epochs

    def extra_losses(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        terms = self.student.losses(output.extras)
        if "teacher_embedding" in output.extras and self.config.distill_weight != 0:
            mad = margin_aware_distillation(
                output.extras["embedding"],
                output.extras["teacher_embedding"],
                output.extras["teacher_logits"],
            )
            terms["mad"] = self.config.distill_weight * mad
        return terms

    def loss(
        self,
        output: MethodOutput,
        target: torch.Tensor,
        mask: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> LossOutput:
        if self.in_teacher_stage:
            return self.teacher.loss(output, target, mask, present)
        result = super().loss(output, target, mask, present)
        if not self.training:
            return result
        if int(self.epoch) < self.config.warmup_epochs:
            self._observe_predictions(output.logits.detach(), mask)
        elif bool(self.weak.any()) and self.config.mar_weight > 0:
            mar = self._modality_aware_regularization(
                output.extras["unimodal_logits"], target, mask
            )
            result.terms["mar"] = self.config.mar_weight * mar
            result.total = result.total + result.terms["mar"]
        return result

    def _observe_predictions(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """Count predicted labels per combination (the label distributions of Eq. 10-11)."""
        combination = self.modalities.combination_index(mask)
        predicted = self.task.predict(logits)
        if predicted.dim() > 1:  # dense tasks: every location is a prediction
            combination = combination.view(-1, *[1] * (predicted.dim() - 1)).expand_as(predicted)
        flat = combination.reshape(-1) * self.label_counts.shape[1] + predicted.reshape(-1)
        counts = torch.bincount(flat, minlength=self.label_counts.numel())
        self.label_counts += counts.view_as(self.label_counts).to(self.label_counts)

    def _modality_aware_regularization(
        self, unimodal_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """sum over weak modalities i of the auxiliary task loss on the samples using i, / B."""
        batch = mask.shape[0]
        terms = []
        for index in torch.nonzero(self.weak).flatten().tolist():
            per_sample = self.task.per_sample_loss(unimodal_logits[:, index], target)
            terms.append((per_sample * mask[:, index].to(per_sample.dtype)).sum() / batch)
        return torch.stack(terms).sum()

    def select_weak_modalities(self) -> None:
        """Eq. 12-13: the candidate combination whose label distribution is furthest (KL) from
        the full combination's; its modalities become the weak ones."""
        if not self.candidates:
            return
        distribution = (self.label_counts + 1.0) / (self.label_counts + 1.0).sum(-1, keepdim=True)
        full = distribution[self.full_index]
        distance = torch.stack(
            [(distribution[c] * (distribution[c] / full).log()).sum() for c in self.candidates]
        )
        weakest = self.modalities.combinations()[self.candidates[int(distance.argmax())]]
        self.weak.zero_()
        self.weak[list(weakest)] = True
        log.info(
            "MAR: weak combination %s (label-distribution KL from the full set: %s)",
            self.modalities.format(weakest),
            ", ".join(
                f"{self.modalities.format(self.modalities.combinations()[c])} {float(d):.4f}"
                for c, d in zip(self.candidates, distance, strict=True)
            ),
        )

    def start_epoch(self, epoch: int) -> dict[str, float]:
        if self.in_teacher_stage:
            return {}  # epochs, HCR and MAR statistics belong to the student stage
        logs = super().start_epoch(epoch)
        if epoch >= self.config.warmup_epochs and not bool(self.weak.any()):
            # Also reached when resuming from a checkpoint written at the end of the warm-up.
            self.select_weak_modalities()
        self.epoch.fill_(epoch)
        return logs

    def end_epoch(self, epoch: int) -> dict[str, float]:
        if self.in_teacher_stage:
            return {}
        logs = super().end_epoch(epoch)
        if epoch == self.config.warmup_epochs - 1:
            self.select_weak_modalities()
        logs["mar/num_weak"] = float(self.weak.sum())
        return logs
