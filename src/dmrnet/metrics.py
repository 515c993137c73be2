"""Summaries of a metric over modality combinations, and the
presentation-attack-detection metrics of ISO/IEC 30107-3 (APCER, BPCER, ACER)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from dmrnet.errors import DataError
from dmrnet.modalities import Combination, ModalitySet, availability_weights


def summarize(
    values: Sequence[float],
    combinations: Sequence[Combination],
    modalities: ModalitySet,
    higher_is_better: bool = True,
    availability_p: float = 0.5,
) -> dict[str, float | None]:
    """mean over combinations, worst, full-modality value, and the expected value when every
    modality is available independently with probability p (renormalized to the non-empty
    combinations evaluated)."""
    if not values:
        raise ValueError("no combinations to summarize")
    worst = min(values) if higher_is_better else max(values)
    full = modalities.full
    return {
        "mean": sum(values) / len(values),
        "worst": worst,
        "full": values[list(combinations).index(full)] if full in combinations else None,
        f"expected_p{availability_p:g}": expected_value(
            values, combinations, modalities, availability_p
        ),
    }


def expected_value(
    values: Sequence[float],
    combinations: Sequence[Combination],
    modalities: ModalitySet,
    availability: float | Sequence[float],
) -> float:
    """The metric expected when each modality is available independently with its probability
    (one for all, or one per modality), over the non-empty combinations evaluated."""
    weights = availability_weights(modalities, combinations, availability)
    return sum(w * v for w, v in zip(weights, values, strict=True))


class CombinationAccuracy(Metric):
    """Accuracy of C combinations at once: states are (C,) counts, reduced by sum across DDP
    processes. update(logits (C, B, K), target (B,), usable (C, B) bool)."""

    full_state_update = False

    def __init__(self, count: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros(count, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(count, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor, usable: torch.Tensor) -> None:
        hits = (logits.argmax(-1) == target.unsqueeze(0)) & usable  # (C, B)
        self.correct += hits.sum(1)
        self.total += usable.sum(1)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"accuracy": self.correct.double() / self.total.clamp(min=1)}


# -- presentation-attack detection (ISO/IEC 30107-3) --------------------------------------------
#
# A PAD system decides, per sample, "bona fide" (a live face) or "attack" (a presentation attack:
# print, replay, mask). ISO/IEC 30107-3 names the two error rates:
#
#   APCER = attacks accepted as bona fide / attacks
#   BPCER = bona fide samples rejected as attacks / bona fide samples
#   ACER  = (APCER + BPCER) / 2
#
# HTER = (FAR + FRR) / 2 pools all attacks into one false-acceptance rate. The standard's APCER is
# computed per attack species (and ACER takes the worst species); the data sets dmrnet reads label
# samples only 0/1, i.e. one pooled species, so ACER and HTER coincide here. Both are reported,
# for comparison with papers that use either.
#
# The paper's code (DMRNet, face-antispoofing/lib/model_develop.py, `calc_accuracy_multi`) names
# BPCER "APCER" and APCER "NPCER"; dmrnet follows the standard. Its ACER is the same number.
#
# The score of a sample is the bona fide log-odds, logits[bona fide] - logits[attack]; "argmax"
# decides bona fide when the bona fide logit is the larger (the paper's code), a threshold t
# decides bona fide when score >= t.

PAD_METRICS: tuple[str, ...] = ("acer", "apcer", "bpcer", "hter", "accuracy")


def pad_scores(logits: torch.Tensor, bona_fide_class: int) -> torch.Tensor:
    """(B,) bona fide log-odds of 2-way logits (B, 2)."""
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"PAD metrics need (B, 2) logits, got shape {tuple(logits.shape)}")
    return logits[:, bona_fide_class] - logits[:, 1 - bona_fide_class]


def pad_rates(
    bona_accepted: torch.Tensor,
    bona_rejected: torch.Tensor,
    attack_accepted: torch.Tensor,
    attack_rejected: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """APCER, BPCER, ACER, HTER and accuracy from the four decision counts. A rate whose
    denominator is zero (no attacks, or no bona fide samples) is NaN."""
    counts = [c.double() for c in (bona_accepted, bona_rejected, attack_accepted, attack_rejected)]
    bona_accepted, bona_rejected, attack_accepted, attack_rejected = counts
    apcer = attack_accepted / (attack_accepted + attack_rejected)
    bpcer = bona_rejected / (bona_accepted + bona_rejected)
    total = bona_accepted + bona_rejected + attack_accepted + attack_rejected
    return {
        "acer": (apcer + bpcer) / 2,
        "apcer": apcer,
        "bpcer": bpcer,
        # FAR = attacks accepted / attacks, FRR = bona fide rejected / bona fide (all attacks
        # pooled): equal to ACER when, as here, the labels do not tell attack species apart.
        "hter": (apcer + bpcer) / 2,
        "accuracy": (bona_accepted + attack_rejected) / total,
    }


def equal_error_threshold(scores: torch.Tensor, bona_fide: torch.Tensor) -> torch.Tensor:
    """The threshold t (decide bona fide when score >= t) at which APCER and BPCER are closest.

    Every distinct score is a candidate (plus "reject everything"); ties in |APCER - BPCER| go to
    the lower ACER, then to the lower threshold. The returned value sits midway between the chosen
    score and the next lower one, so the decisions on these scores do not depend on float
    rounding. Needs both classes; raises ValueError otherwise.
    """
    scores = scores.detach().double().flatten()
    bona_fide = bona_fide.bool().flatten()
    bona, attacks = scores[bona_fide].sort().values, scores[~bona_fide].sort().values
    if bona.numel() == 0 or attacks.numel() == 0:
        raise ValueError(
            "an equal-error threshold needs bona fide and attack samples, got "
            f"{bona.numel()} bona fide and {attacks.numel()} attacks"
        )
    distinct = torch.unique(scores)  # ascending
    candidates = torch.cat([distinct, distinct.new_tensor([torch.inf])])
    attack_accepted = attacks.numel() - torch.searchsorted(attacks, candidates, side="left")
    bona_rejected = torch.searchsorted(bona, candidates, side="left")
    apcer = attack_accepted.double() / attacks.numel()
    bpcer = bona_rejected.double() / bona.numel()
    gap = (apcer - bpcer).abs()
    tied = gap <= gap.min() + 1e-12
    acer = torch.where(tied, (apcer + bpcer) / 2, torch.inf)
    best = int(torch.argmin(acer))  # first minimum: the lowest threshold
    if best == 0:
        return distinct[0] - 1.0
    if best == distinct.numel():
        return distinct[-1] + 1.0
    return (distinct[best - 1] + distinct[best]) / 2


class PresentationAttackMetric(Metric):
    """One of APCER / BPCER / ACER / HTER / accuracy of binary presentation-attack detection,
    updated with (logits (B, 2), target (B,)).

    Decision rule: `threshold=None` is argmax (the paper's code); a float decides bona fide when
    the bona fide log-odds >= threshold; `self_calibrate=True` decides at the equal-error
    threshold of the accumulated samples themselves (the EER operating point, used to select
    checkpoints on validation when test thresholds are calibrated on validation).

    States are summed decision counts (fixed rules) or concatenated scores (self-calibrating), so
    the metric synchronizes across DDP processes like any torchmetrics metric.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        name: str,
        bona_fide_class: int = 1,
        threshold: float | None = None,
        self_calibrate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if name not in PAD_METRICS:
            raise ValueError(f"unknown PAD metric {name!r}; choose one of {', '.join(PAD_METRICS)}")
        if bona_fide_class not in (0, 1):
            raise ValueError(f"bona_fide_class must be 0 or 1, got {bona_fide_class}")
        if self_calibrate and threshold is not None:
            raise ValueError("give either a fixed threshold or self_calibrate, not both")
        self.name = name
        self.bona_fide_class = bona_fide_class
        self.threshold = threshold
        self.self_calibrate = self_calibrate
        if self_calibrate:
            self.add_state("scores", default=[], dist_reduce_fx="cat")
            self.add_state("bona_fide", default=[], dist_reduce_fx="cat")
        else:
            for state in ("bona_accepted", "bona_rejected", "attack_accepted", "attack_rejected"):
                zero = torch.tensor(0, dtype=torch.long)
                self.add_state(state, default=zero, dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        bona_fide = target == self.bona_fide_class
        if self.self_calibrate:
            self.scores.append(pad_scores(logits.detach(), self.bona_fide_class).float())
            self.bona_fide.append(bona_fide)
            return
        if self.threshold is None:
            accepted = logits.argmax(-1) == self.bona_fide_class
        else:
            scores = pad_scores(logits.detach(), self.bona_fide_class).double()
            accepted = scores >= self.threshold
        self.bona_accepted += (bona_fide & accepted).sum()
        self.bona_rejected += (bona_fide & ~accepted).sum()
        self.attack_accepted += (~bona_fide & accepted).sum()
        self.attack_rejected += (~bona_fide & ~accepted).sum()

    def compute(self) -> torch.Tensor:
        if self.self_calibrate:
            scores = dim_zero_cat(self.scores).double()
            bona_fide = dim_zero_cat(self.bona_fide).bool()
            if bool(bona_fide.all()) or not bool(bona_fide.any()):
                # One class only: no EER threshold, and one of the rates is undefined anyway.
                accepted = scores >= 0
            else:
                accepted = scores >= equal_error_threshold(scores, bona_fide)
            counts = [
                (bona_fide & accepted).sum(),
                (bona_fide & ~accepted).sum(),
                (~bona_fide & accepted).sum(),
                (~bona_fide & ~accepted).sum(),
            ]
        else:
            counts = [
                self.bona_accepted,
                self.bona_rejected,
                self.attack_accepted,
                self.attack_rejected,
            ]
        return pad_rates(*counts)[self.name]


class EqualErrorThreshold(Metric):
    """Accumulates (logits, target) and computes the equal-error threshold of the bona fide
    log-odds: what a PAD task calibrates on the validation split before evaluating the test
    split (see `equal_error_threshold`). Raises DataError when a class is missing."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, bona_fide_class: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bona_fide_class = bona_fide_class
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("bona_fide", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.scores.append(pad_scores(logits.detach(), self.bona_fide_class).float())
        self.bona_fide.append(target == self.bona_fide_class)

    def compute(self) -> torch.Tensor:
        scores, bona_fide = dim_zero_cat(self.scores), dim_zero_cat(self.bona_fide)
        try:
            return equal_error_threshold(scores, bona_fide)
        except ValueError as error:
            raise DataError(
                f"cannot calibrate the PAD decision threshold on the validation split: {error}; "
                "use threshold 'argmax' or a validation split with both classes"
            ) from None


# -- confidence: calibration and selective prediction (docs/calibration.md) ----------------------
#
# The confidence of a prediction is the largest class probability. The metrics below are computed
# per modality combination from that combination's logits; a dense task (segmentation) counts each
# pixel as a sample (a fixed-size random subset of each batch's valid pixels, see
# `CombinationLogits`).

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error
COVERAGES = (0.9, 0.8, 0.5)  # accuracy at these fractions of the most confident samples

# Each confidence metric and whether higher is better, declared once.
CONFIDENCE_METRICS: dict[str, bool] = {
    "nll": False,
    "brier": False,
    "ece": False,
    "ece_floor": False,  # the ECE that sampling noise alone gives (see `calibration_error_floor`)
    "auroc": True,  # of 1 - confidence as a detector of errors
    **{f"accuracy_at_{round(100 * c)}": True for c in COVERAGES},
    "aurc": False,  # area under the risk-coverage curve
}


def sorted_by_confidence(
    confidence: torch.Tensor, correct: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence descending, accuracy of the k most confident samples for k = 1..N)."""
    order = torch.argsort(confidence, descending=True, stable=True)
    hits = correct[order].double().cumsum(0)
    return confidence[order], hits / torch.arange(1, hits.numel() + 1, dtype=torch.float64)


def calibration_error_floor(confidence: torch.Tensor, draws: int = 200, seed: int = 0) -> float:
    """The ECE that sampling noise alone gives on these samples: the mean ECE (the 15 bins of
    torchmetrics' `CalibrationError`) when each sample's correctness is drawn with probability
    its confidence, i.e. the ECE of a perfectly calibrated model with these confidences. On a
    few hundred samples it is not small, so an ECE near it is as good as this many samples can
    show."""
    confidence = confidence.double().flatten()
    boundaries = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    bins = (torch.bucketize(confidence, boundaries, right=True) - 1).expand(draws, -1)
    generator = torch.Generator().manual_seed(seed)
    outcomes = torch.rand(draws, confidence.numel(), generator=generator, dtype=torch.float64)
    gaps = (outcomes < confidence).double() - confidence  # (draws, N) correct - confidence
    per_bin = torch.zeros(draws, ECE_BINS + 1, dtype=torch.float64).scatter_add_(1, bins, gaps)
    return float(per_bin.abs().sum(1).mean() / confidence.numel())


def confidence_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """NLL, Brier score, ECE (15 equal-width bins, torchmetrics) and its sampling-noise floor,
    AUROC of 1 - confidence for
    telling errors from correct predictions (torchmetrics; NaN when there are no errors or no
    correct predictions), accuracy at 90/80/50% coverage and the area under the risk-coverage
    curve, of logits (N, K) against targets (N,). All NaN for N = 0."""
    from torchmetrics.functional.classification import (
        binary_auroc,
        multiclass_calibration_error,
    )

    if target.numel() == 0:
        return dict.fromkeys(CONFIDENCE_METRICS, float("nan"))
    logits, target = logits.double(), target.long()
    probabilities = logits.softmax(-1)  # (N, K)
    confidence, prediction = probabilities.max(-1)
    correct = prediction == target
    classes = logits.shape[-1]
    onehot = torch.nn.functional.one_hot(target, classes).double()
    values = {
        "nll": float(torch.nn.functional.cross_entropy(logits, target)),
        "brier": float(((probabilities - onehot) ** 2).sum(-1).mean()),
        "ece": float(
            multiclass_calibration_error(
                probabilities, target, classes, ECE_BINS, norm="l1", validate_args=False
            )
        ),
        "ece_floor": calibration_error_floor(confidence),
        "auroc": float(binary_auroc(1.0 - confidence, (~correct).long()))
        if 0 < int(correct.sum()) < correct.numel()
        else float("nan"),
    }
    _, accuracy = sorted_by_confidence(confidence, correct)
    for coverage in COVERAGES:
        kept = max(1, math.ceil(coverage * accuracy.numel()))
        values[f"accuracy_at_{round(100 * coverage)}"] = float(accuracy[kept - 1])
    # Risk = 1 - accuracy of the k most confident samples, averaged over k = 1..N.
    values["aurc"] = float((1.0 - accuracy).mean())
    return values


class CombinationLogits(Metric):
    """Collects the logits of C combinations at once, with the targets, which combinations may
    use each sample, and the embedding variances: what temperature scaling fits on (validation)
    and what `confidence_metrics` reads (test).

    update(logits (C, B, K) or dense (C, B, K, ...), target (B,) or (B, ...), usable (C, B),
    variance (C, B) or None). A dense task stores at most `max_pixels` valid pixels per batch,
    drawn with a fixed seed (all pixels of a test split would not fit in memory); each pixel is
    then a sample, with its image's usability and variance. States are concatenated across DDP
    processes."""

    full_state_update = False

    def __init__(
        self, ignore_index: int | None = None, max_pixels: int = 4096, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.max_pixels = max_pixels
        self.generator = torch.Generator().manual_seed(0)
        for state in ("logits", "target", "usable", "variance"):
            self.add_state(state, default=[], dist_reduce_fx="cat")

    def update(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        usable: torch.Tensor,
        variance: torch.Tensor | None = None,
    ) -> None:
        count, batch, classes = logits.shape[:3]
        if variance is None:
            variance = torch.full((count, batch), float("nan"), device=logits.device)
        if logits.dim() == 3:
            sample = torch.arange(batch, device=logits.device)
            selected = logits.detach().permute(1, 0, 2)  # (B, C, K)
            labels = target
        else:
            pixels = logits.shape[3:].numel()
            flat_target = target.reshape(batch, pixels)
            valid = torch.ones_like(flat_target, dtype=torch.bool)
            if self.ignore_index is not None:
                valid = flat_target != self.ignore_index
            positions = torch.nonzero(valid.flatten()).flatten()
            if positions.numel() > self.max_pixels:
                keep = torch.randperm(positions.numel(), generator=self.generator)
                positions = positions[keep[: self.max_pixels].to(positions.device)]
            sample, pixel = positions // pixels, positions % pixels
            # Advanced indices first: (N, C, K) for the chosen (image, pixel) pairs.
            selected = logits.detach().reshape(count, batch, classes, pixels)[:, sample, :, pixel]
            labels = flat_target[sample, pixel]
        self.logits.append(selected.float())
        self.target.append(labels.long())
        self.usable.append(usable[:, sample].T)
        self.variance.append(variance.detach()[:, sample].T.float())

    def compute(self) -> dict[str, torch.Tensor]:
        """{"logits": (N, C, K), "target": (N,), "usable": (N, C), "variance": (N, C)}."""
        return {
            name: dim_zero_cat(getattr(self, name))
            for name in ("logits", "target", "usable", "variance")
        }
