"""Per-combination confidence calibration, selective prediction and its report.

After training, one validation pass (evaluate.calibrate_combinations: encoders once, every
combination decoded from the same features) collects each combination's logits. For every
combination dmrnet then fits

- a temperature T (temperature scaling, Guo et al., ICML 2017): calibrated probabilities are
  softmax(logits / T), with T minimizing the validation NLL. Dividing by T > 0 never changes the
  argmax, so accuracy is unchanged; a combination with fewer modalities is typically less (or
  differently) confident than the full set, hence one T per combination;
- the validation risk-coverage curve of the calibrated confidence, from which a confidence
  threshold that reaches a target accuracy is read (abstention: `predict --target-accuracy`);
- the mean and standard deviation of the embedding variance (methods that provide one), to test
  whether a per-combination standardized variance detects errors (docs/calibration.md: it does
  not beat 1 - confidence);
- the task's own decision value (presentation-attack detection's equal-error threshold).

All of it is a `Calibration`, stored in the checkpoint (`checkpoint["dmrnet"]["calibration"]`,
plain types, weights_only-loadable) and applied by evaluate, predict and the Python API.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dmrnet.errors import ConfigError
from dmrnet.modalities import Combination, ModalitySet

METHOD = "temperature"
CURVE_POINTS = 256  # validation risk-coverage points kept per combination
TEMPERATURE_RANGE = (0.05, 20.0)
PRIOR_STD = 0.5  # of log T, see `fit_temperatures`


def fit_temperatures(
    logits: torch.Tensor,
    target: torch.Tensor,
    usable: torch.Tensor,
    prior_std: float = PRIOR_STD,
) -> torch.Tensor:
    """(C,) temperatures of C combinations at once from logits (N, C, K), targets (N,) and
    usable (N, C): each T minimizes its combination's summed NLL of softmax(logits / T) over
    its usable samples plus (log T)^2 / (2 prior_std^2).

    The objective separates over combinations, so one L-BFGS run over the C values of log T
    (which keeps T positive) finds every combination's optimum; fitting them one by one cost
    more than the validation pass. The log-normal prior around T = 1 (MAP instead of Guo et
    al.'s plain NLL) matters only where validation tells little: a combination whose validation
    samples are all correct has an NLL that keeps falling as T -> 0, and would get an absurdly
    sharp T that makes every test error cost a huge NLL. A combination without samples gets
    T = 1."""
    count = logits.shape[1]
    logits, weights = logits.detach().double(), usable.double()
    targets = target.long().unsqueeze(1).expand(-1, count)  # (N, C)
    log_t = torch.zeros(count, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        scaled = logits / log_t.exp().view(1, count, 1)  # (N, C, K)
        nll = F.cross_entropy(scaled.transpose(1, 2), targets, reduction="none")  # (N, C)
        loss = (nll * weights).sum() + (log_t**2).sum() / (2 * prior_std**2)
        loss.backward()
        return loss

    if bool(weights.any()):
        optimizer.step(closure)
    return log_t.detach().exp().clamp(*TEMPERATURE_RANGE)


def fit_temperature(logits: torch.Tensor, target: torch.Tensor) -> float:
    """The temperature of one combination's logits (N, K) (see `fit_temperatures`)."""
    usable = torch.ones(target.shape[0], 1, dtype=torch.bool)
    return float(fit_temperatures(logits.unsqueeze(1), target, usable)[0])


@dataclass
class RiskCoverage:
    """A validation risk-coverage curve: keeping the samples whose confidence is >= thresholds[i]
    covers coverage[i] of them at accuracy accuracy[i] (thresholds descending)."""

    thresholds: list[float]
    coverage: list[float]
    accuracy: list[float]

    @classmethod
    def of(cls, confidence: torch.Tensor, correct: torch.Tensor) -> RiskCoverage:
        from dmrnet.metrics import sorted_by_confidence  # lazy: torchmetrics is slow to import

        if confidence.numel() == 0:
            return cls([], [], [])
        ordered, accuracy = sorted_by_confidence(confidence, correct)
        # Only where the confidence drops is "confidence >= t" exactly the top k samples (ties).
        ends = torch.nonzero(torch.cat([ordered[1:] < ordered[:-1], ordered.new_ones(1).bool()]))
        ends = ends.flatten()
        if ends.numel() > CURVE_POINTS:
            ends = ends[torch.linspace(0, ends.numel() - 1, CURVE_POINTS).round().long()]
        total = confidence.numel()
        return cls(
            thresholds=ordered[ends].double().tolist(),
            coverage=((ends + 1).double() / total).tolist(),
            accuracy=accuracy[ends].tolist(),
        )

    def threshold_for(self, accuracy: float) -> tuple[float, float]:
        """(threshold, coverage) of the largest coverage whose accuracy reaches `accuracy`;
        (inf, 0.0) when none does (abstain on everything)."""
        best = (math.inf, 0.0)
        for threshold, coverage, reached in zip(
            self.thresholds, self.coverage, self.accuracy, strict=True
        ):
            if reached >= accuracy - 1e-12 and coverage > best[1]:
                best = (threshold, coverage)
        return best


@dataclass
class Calibration:
    """What calibration fitted per combination on the validation split (see module doc)."""

    temperatures: dict[Combination, float]
    curves: dict[Combination, RiskCoverage] = field(default_factory=dict)
    # (mean, std) of the embedding variance on validation; empty for deterministic methods.
    variance: dict[Combination, tuple[float, float]] = field(default_factory=dict)
    # The task's decision value (PAD: the equal-error threshold); None when the task has none.
    decision: dict[Combination, float] | None = None
    method: str = METHOD
    seconds: float = 0.0  # wall time of the validation pass and the fits

    def temperature(self, combination: Combination) -> float:
        return self.temperatures.get(combination, 1.0)

    def threshold_for(self, combination: Combination, accuracy: float) -> tuple[float, float]:
        """(confidence threshold, validation coverage) that reaches `accuracy` on validation."""
        curve = self.curves.get(combination)
        return (math.inf, 0.0) if curve is None else curve.threshold_for(accuracy)

    def to_dict(self, modalities: ModalitySet) -> dict[str, Any]:
        """Plain types keyed by combination name ("pix+fou"), for the checkpoint."""
        name = modalities.format
        return {
            "method": self.method,
            "seconds": self.seconds,
            "temperature": {name(c): t for c, t in self.temperatures.items()},
            "curves": {name(c): vars(curve) for c, curve in self.curves.items()},
            "variance": {name(c): list(v) for c, v in self.variance.items()},
            "decision": None
            if self.decision is None
            else {name(c): v for c, v in self.decision.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], modalities: ModalitySet) -> Calibration:
        parse = modalities.parse
        decision = data.get("decision")
        return cls(
            temperatures={parse(k): float(v) for k, v in data["temperature"].items()},
            curves={parse(k): RiskCoverage(**v) for k, v in data.get("curves", {}).items()},
            variance={parse(k): (float(v[0]), float(v[1])) for k, v in data["variance"].items()},
            decision=None
            if decision is None
            else {parse(k): float(v) for k, v in decision.items()},
            method=str(data.get("method", METHOD)),
            seconds=float(data.get("seconds", 0.0)),
        )


def fit_calibration(
    collected: Mapping[str, torch.Tensor],
    combinations: Sequence[Combination],
    decision: dict[Combination, float] | None = None,
) -> Calibration:
    """Fit a `Calibration` from a `CombinationLogits` state collected on the validation split."""
    fitted = fit_temperatures(collected["logits"], collected["target"], collected["usable"])
    temperatures = {c: float(t) for c, t in zip(combinations, fitted, strict=True)}
    curves, variance = {}, {}
    for index, combination in enumerate(combinations):
        logits, target, scores = usable_samples(collected, index)
        if target.numel() == 0:
            continue
        probabilities = (logits / temperatures[combination]).softmax(-1)
        confidence, prediction = probabilities.max(-1)
        curves[combination] = RiskCoverage.of(confidence, prediction == target)
        if not bool(torch.isnan(scores).any()):
            std = float(scores.std()) if scores.numel() > 1 else 0.0
            variance[combination] = (float(scores.mean()), std)
    return Calibration(temperatures, curves, variance, decision)


def usable_samples(
    collected: Mapping[str, torch.Tensor], index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (N, K), target (N,), variance (N,)) of the samples combination `index` may use."""
    usable = collected["usable"][:, index]
    return (
        collected["logits"][usable, index],
        collected["target"][usable],
        collected["variance"][usable, index],
    )


def confidence_report(
    collected: Mapping[str, torch.Tensor],
    combinations: Sequence[Combination],
    calibration: Calibration,
    modalities: ModalitySet,
    target_accuracy: float | None = None,
) -> dict[str, Any]:
    """The results.json "calibration" section for an evaluated split: per combination, every
    confidence metric before and after calibration, the temperatures, and (with
    `target_accuracy`) the validation threshold that reaches it with its coverage on validation
    and on this split; plus the error-detection AUROC pooled over combinations of 1 - confidence,
    the raw embedding variance and the per-combination standardized variance."""
    from torchmetrics.functional.classification import binary_auroc

    from dmrnet.metrics import CONFIDENCE_METRICS, confidence_metrics

    name = modalities.format
    section: dict[str, Any] = {
        "method": calibration.method,
        "split": "validation",
        "seconds": calibration.seconds,
        "temperature": {name(c): calibration.temperature(c) for c in combinations},
    }
    for metric in CONFIDENCE_METRICS:
        section[f"{metric}_before"], section[f"{metric}_after"] = {}, {}
    if target_accuracy is not None:
        section.update(
            target_accuracy=target_accuracy,
            threshold={},
            coverage_validation={},
            coverage={},
            accuracy_at_target={},
        )
    pooled: dict[str, list[torch.Tensor]] = {"errors": [], "confidence": [], "variance": []}
    pooled["normalized_variance"] = []
    for index, combination in enumerate(combinations):
        key = name(combination)
        logits, target, variance = usable_samples(collected, index)
        temperature = calibration.temperature(combination)
        for suffix, scale in (("before", 1.0), ("after", temperature)):
            for metric, value in confidence_metrics(logits / scale, target).items():
                section[f"{metric}_{suffix}"][key] = value
        confidence, prediction = (logits / temperature).softmax(-1).max(-1)
        correct = prediction == target
        if target_accuracy is not None:
            threshold, coverage = calibration.threshold_for(combination, target_accuracy)
            kept = confidence >= threshold
            section["threshold"][key] = None if math.isinf(threshold) else threshold
            section["coverage_validation"][key] = coverage
            section["coverage"][key] = float(kept.double().mean()) if kept.numel() else None
            section["accuracy_at_target"][key] = (
                float(correct[kept].double().mean()) if bool(kept.any()) else None
            )
        pooled["errors"].append(~correct)
        pooled["confidence"].append(1.0 - confidence)
        pooled["variance"].append(variance)
        mean, std = calibration.variance.get(combination, (math.nan, math.nan))
        pooled["normalized_variance"].append((variance - mean) / max(std, 1e-12))
    errors = torch.cat(pooled.pop("errors")).long()
    section["auroc_pooled"] = {}
    for score, values in pooled.items():
        scores = torch.cat(values).double()
        usable = 0 < int(errors.sum()) < errors.numel() and not bool(torch.isnan(scores).any())
        section["auroc_pooled"][score] = float(binary_auroc(scores, errors)) if usable else None
    return section


# -- per sample (predict) --------------------------------------------------------------------------


def per_sample(
    calibration: Calibration | None, modalities: ModalitySet, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(temperature (B,), task decision value (B,) or None) of each sample's combination, the
    modalities it has (`present` (B, M)). Without a calibration: T = 1, no decision values."""
    index = modalities.combination_index(present)  # (B,)
    if calibration is None:
        return torch.ones(index.shape, dtype=torch.float32, device=present.device), None
    combinations = modalities.combinations()
    temperature = torch.tensor([calibration.temperature(c) for c in combinations])
    decision = None
    if calibration.decision is not None:
        # A combination without a calibrated threshold decides by argmax (log-odds >= 0).
        values = [calibration.decision.get(c, 0.0) for c in combinations]
        decision = torch.tensor(values, dtype=torch.float64).to(present.device)[index]
    return temperature.to(present.device)[index], decision


def accuracy_thresholds(
    calibration: Calibration, modalities: ModalitySet, present: torch.Tensor, accuracy: float
) -> torch.Tensor:
    """(B,) confidence threshold of each sample's combination that reaches `accuracy` on
    validation (inf where no threshold does: abstain)."""
    index = modalities.combination_index(present)
    values = [calibration.threshold_for(c, accuracy)[0] for c in modalities.combinations()]
    return torch.tensor(values, dtype=torch.float64).to(present.device)[index]


# -- the checkpoint --------------------------------------------------------------------------------


def read_calibration(meta: Mapping[str, Any], modalities: ModalitySet) -> Calibration | None:
    """The calibration stored in a checkpoint's "dmrnet" section, None if it has none."""
    data = meta.get("calibration")
    return None if data is None else Calibration.from_dict(data, modalities)


def put_calibration(
    checkpoint: dict[str, Any], calibration: Calibration, modalities: ModalitySet
) -> None:
    """Put `calibration` into a loaded checkpoint dict (replacing any earlier one)."""
    checkpoint["dmrnet"]["calibration"] = calibration.to_dict(modalities)


def store_calibration(path: str | Path, calibration: Calibration, modalities: ModalitySet) -> None:
    """Write `calibration` into the checkpoint file at `path` (replacing any earlier one)."""
    from dmrnet.files import update_checkpoint

    # Atomic, with the sha256 record beside the checkpoint updated (runs.read_checkpoint).
    update_checkpoint(path, lambda checkpoint: put_calibration(checkpoint, calibration, modalities))


# -- availability probabilities -------------------------------------------------------------------


def parse_availability(text: str, where: str) -> dict[str, float]:
    """`pix=0.9,fou=0.5` -> {"pix": 0.9, "fou": 0.5}; `where` names the option in errors. The
    names are checked against a model's modalities by `check_availability`."""
    values: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, number = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected MODALITY=PROBABILITY, got {part!r}")
        try:
            values[key.strip()] = float(number)
        except ValueError:
            raise ConfigError(f"{where}: {number.strip()!r} is not a probability") from None
    if not values:
        raise ConfigError(f"{where}: expected MODALITY=PROBABILITY pairs, e.g. pix=0.9,fou=0.5")
    return values


def check_availability(values: Mapping[str, float], modalities: ModalitySet, where: str) -> None:
    for key, value in values.items():
        if key not in modalities.names:
            raise ConfigError(
                f"{where}: unknown modality {key!r}; modalities are {'+'.join(modalities.names)}"
            )
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{where}: {key}={value} is not a probability in (0, 1]")


def availability_vector(
    values: Mapping[str, float], modalities: ModalitySet, default: float
) -> list[float]:
    """One probability per modality in the set's order; unnamed modalities get `default`."""
    return [float(values.get(name, default)) for name in modalities.names]


__all__ = [
    "Calibration",
    "RiskCoverage",
    "accuracy_thresholds",
    "availability_vector",
    "calibration_analysis",
    "check_availability",
    "confidence_report",
    "fit_calibration",
    "fit_temperature",
    "fit_temperatures",
    "parse_availability",
    "per_sample",
    "put_calibration",
    "read_calibration",
    "store_calibration",
    "usable_samples",
]


# -- the bench analysis `calibration` (docs/results/calibration.md) -------------------------------


def _mean_std(values: Sequence[float | None], scale: float = 1.0, digits: int = 3) -> str:
    present = [v * scale for v in values if v is not None and not math.isnan(v)]
    if not present:
        return "n/a"
    mean = sum(present) / len(present)
    spread = sum((v - mean) ** 2 for v in present) / max(1, len(present) - 1)
    return f"{mean:.{digits}f} ± {math.sqrt(spread):.{digits}f}"


def _average(values: Mapping[str, float | None]) -> float | None:
    present = [v for v in values.values() if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def _over_seeds(
    sections: Sequence[Mapping[str, Any]],
    key: str,
    name: str | None = None,
    scale: float = 1.0,
    digits: int = 3,
) -> str:
    """mean ± std over seeds of a calibration value: combination `name`'s, or the mean over
    combinations."""
    values = [_average(s[key]) if name is None else s[key][name] for s in sections]
    return _mean_std(values, scale, digits)


def calibration_analysis(dataset: Mapping[str, Any]) -> list[str]:
    """Markdown tables of the runs' calibration sections for one dataset of a bench's
    results.json: per method, mean ± std over seeds of the mean over combinations of ECE (and
    its sampling-noise floor after calibration), NLL and AUROC, the coverage at the target
    accuracy, and the calibration time as a share of the mean training wall time; the same per
    single-modality combination; and the error-detection AUROC pooled over combinations of
    1 - confidence, the embedding variance and the per-combination standardized variance."""
    summary, singles, pooled = [], [], []
    for label, method in dataset["methods"].items():
        sections = [seed["calibration"] for seed in method["seeds"].values()]
        sections = [s for s in sections if "temperature" in s]
        if not sections:
            continue
        over_seeds = functools.partial(_over_seeds, sections)
        target = sections[0].get("target_accuracy")
        coverage = (
            "n/a"
            if target is None
            else f"{100 * target:g}%: {over_seeds('coverage', scale=100, digits=1)} "
            f"(accuracy {over_seeds('accuracy_at_target', scale=100, digits=1)})"
        )
        wall = (method.get("train_wall_s") or {}).get("mean")
        seconds = [s["seconds"] for s in sections]
        share = "n/a" if not wall else _mean_std([t / wall for t in seconds], 100, 2)
        cells = [over_seeds(k) for k in ("ece_before", "ece_after", "ece_floor_after")]
        cells += [over_seeds(k) for k in ("nll_before", "nll_after", "auroc_after")]
        summary.append(
            f"| {label} | {len(sections)} | {' | '.join(cells)} | {coverage} | {share} |"
        )
        for name in dataset["modalities"]:
            keys = ("ece_before", "ece_after", "ece_floor_after", "auroc_after")
            cells = [over_seeds(k, name) for k in keys]
            cells.append(over_seeds("coverage", name, 100, 1))
            singles.append(f"| {label} | {name} | {' | '.join(cells)} |")
        scores = ("confidence", "variance", "normalized_variance")
        cells = [_mean_std([s["auroc_pooled"][k] for s in sections]) for k in scores]
        pooled.append(f"| {label} | {' | '.join(cells)} |")
    if not summary:
        return ["### Calibration", "", "No run reports a calibration."]
    return [
        "### Calibration (temperature scaling per combination, fitted on validation)",
        "",
        "Test split, mean ± std over seeds; per method the means over combinations. ECE floor: "
        "the ECE a perfectly calibrated model with these confidences would show on these "
        "samples. AUROC: of 1 - confidence for detecting errors. Coverage: share of test "
        "samples kept by the per-combination confidence threshold that reached the target "
        "accuracy on validation. Time: validation pass and fits against the training wall time.",
        "",
        "| method | seeds | ECE before | ECE after | ECE floor | NLL before | NLL after | AUROC "
        "| coverage at target (test accuracy) | calibration / training time (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *summary,
        "",
        "Single-modality combinations:",
        "",
        "| method | modality | ECE before | ECE after | ECE floor | AUROC "
        "| coverage at target (%) |",
        "|---|---|---:|---:|---:|---:|---:|",
        *singles,
        "",
        "Error-detection AUROC, all combinations' test samples pooled:",
        "",
        "| method | 1 - confidence | embedding variance | standardized variance |",
        "|---|---:|---:|---:|",
        *pooled,
    ]
