"""Every-combination evaluation and its reports.

Encoders run once per batch; `decode_many` then decodes all requested combinations from the same
features, so evaluating all 2^M - 1 combinations costs about one forward pass. A sample counts
for a combination only if it really has every modality the combination uses (real missingness).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dmrnet.calibration import (
    Calibration,
    availability_vector,
    confidence_report,
    fit_calibration,
    usable_samples,
)
from dmrnet.files import atomic_write, save_figure, write_text

# dmrnet.metrics (torchmetrics) is imported where it is used: it costs about 2 s, and loading a
# model for prediction needs none of it.
from dmrnet.modalities import Combination, ModalitySet

RESULT_FILES = ("results.json", "results.csv", "results.md", "results.png")
# Written beside them when the report has calibrated confidences (see docs/calibration.md).
CONFIDENCE_PLOTS = ("reliability.png", "risk_coverage.png")


@dataclass
class CombinationResult:
    combination: Combination
    name: str
    samples: int
    metrics: dict[str, float]
    variance: float | None = None  # mean embedding variance over the samples
    # Vector metrics, one value per class (segmentation's IoU; None = class absent).
    per_class: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class EvaluationReport:
    dataset: str
    method: str
    split: str
    modalities: ModalitySet
    metric: str  # headline metric
    higher_is_better: dict[str, bool]
    results: list[CombinationResult]
    availability_p: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None  # labels of the per-class metrics
    # Per-modality availability probabilities of the "expected_availability" summary.
    availability: dict[str, float] | None = None
    # The validation calibration applied (stored in the checkpoint after training), and per
    # combination the (confidence before, confidence after, correct) of the evaluated samples,
    # for the plots; results.json holds its metrics under "calibration".
    calibration: Calibration | None = None
    confidences: dict[Combination, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )

    def values(self, metric: str | None = None) -> list[float]:
        metric = metric or self.metric
        return [r.metrics[metric] for r in self.results]

    def summary(self, metric: str | None = None) -> dict[str, float | None]:
        """`summarize`, plus the expected value with every modality available with probability
        0.9 and, when given, under the per-modality `availability` (unnamed modalities:
        `availability_p`)."""
        from dmrnet.metrics import expected_value, summarize

        metric = metric or self.metric
        values, combinations = self.values(metric), [r.combination for r in self.results]
        summary = summarize(
            values,
            combinations,
            self.modalities,
            higher_is_better=self.higher_is_better[metric],
            availability_p=self.availability_p,
        )
        summary["expected_all_p0.9"] = expected_value(values, combinations, self.modalities, 0.9)
        if self.availability:
            probabilities = availability_vector(
                self.availability, self.modalities, self.availability_p
            )
            summary["expected_availability"] = expected_value(
                values, combinations, self.modalities, probabilities
            )
        return summary

    def to_dict(self) -> dict[str, Any]:
        """The results.json of a run (values are fractions)."""
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "method": self.method,
            "split": self.split,
            "metric": self.metric,
            "modalities": list(self.modalities.names),
            "combinations": {r.name: r.metrics[self.metric] for r in self.results},
            "summary": self.summary(),
            "samples": {r.name: r.samples for r in self.results},
            "variance": {r.name: r.variance for r in self.results if r.variance is not None},
        }
        if len(self.higher_is_better) > 1:
            data["metrics"] = {
                metric: {
                    "combinations": {r.name: r.metrics[metric] for r in self.results},
                    "summary": self.summary(metric),
                    "higher_is_better": self.higher_is_better[metric],
                }
                for metric in self.higher_is_better
            }
        for metric in sorted({m for r in self.results for m in r.per_class}):
            rows = {r.name: r.per_class[metric] for r in self.results if metric in r.per_class}
            count = len(next(iter(rows.values())))
            data.setdefault("per_class", {})[metric] = {
                "classes": list(self.class_names or range(count)),
                "combinations": rows,
            }
        if self.availability:
            data["availability"] = {
                **dict.fromkeys(self.modalities.names, self.availability_p),
                **self.availability,
            }
        data.update(self.extra)
        return data

    def write(self, directory: str | Path) -> list[Path]:
        """Write results.json, .csv, .md and a .png plot into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / name for name in RESULT_FILES]
        # Atomic (files.atomic_write): a failed write keeps the previous results whole.
        write_text(paths[0], json.dumps(self.to_dict(), indent=2) + "\n")
        self._write_csv(paths[1])
        write_text(paths[2], self.markdown())
        plot_report(self, paths[3])
        if self.confidences:
            reliability, risk_coverage = (directory / name for name in CONFIDENCE_PLOTS)
            plot_reliability(self, reliability)
            plot_risk_coverage(self, risk_coverage)
            paths += [reliability, risk_coverage]
        return paths

    def _write_csv(self, path: Path) -> None:
        metrics = list(self.higher_is_better)
        calibration = self.extra.get("calibration", {})
        # Per-combination calibration columns: temperature, every metric before/after, coverage.
        columns = [k for k in calibration if isinstance(calibration[k], dict)]
        columns = [k for k in columns if k not in ("auroc_pooled", "decision_threshold")]
        with atomic_write(path, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["combination", "size", "samples", *metrics, "variance", *columns])
            for r in self.results:
                writer.writerow(
                    [r.name, len(r.combination), r.samples]
                    + [f"{r.metrics[m]:.6f}" for m in metrics]
                    + ["" if r.variance is None else f"{r.variance:.6f}"]
                    + [_number(calibration[k].get(r.name), 6, "") for k in columns]
                )

    def markdown(self) -> str:
        lines = [
            f"# {self.method} on {self.dataset} ({self.split}): {self.metric} per combination",
            "",
            f"| combination | size | samples | {self.metric} | variance |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.results:
            variance = "" if r.variance is None else f"{r.variance:.4f}"
            lines.append(
                f"| {r.name} | {len(r.combination)} | {r.samples} | "
                f"{_percent(r.metrics[self.metric])} | {variance} |"
            )
        lines += ["", f"| summary | {self.metric} |", "|---|---:|"]
        lines += [f"| {k} | {_percent(v)} |" for k, v in self.summary().items()]
        for metric in sorted({m for r in self.results for m in r.per_class}):
            rows = [r for r in self.results if metric in r.per_class]
            classes = self.class_names or tuple(map(str, range(len(rows[0].per_class[metric]))))
            lines += ["", f"| {metric} per class | " + " | ".join(r.name for r in rows) + " |"]
            lines.append("|---|" + "---:|" * len(rows))
            for index, name in enumerate(classes):
                cells = [_percent(r.per_class[metric][index]) for r in rows]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if "calibration" in self.extra:
            lines += ["", *calibration_markdown(self.extra["calibration"], self.results)]
        return "\n".join(lines) + "\n"

    def rich_table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.method} on {self.dataset} ({self.split}): {self.metric}")
        table.add_column("combination")
        table.add_column("size", justify="right")
        table.add_column(self.metric, justify="right")
        has_variance = any(r.variance is not None for r in self.results)
        if has_variance:
            table.add_column("variance", justify="right")
        for r in self.results:
            row = [r.name, str(len(r.combination)), _percent(r.metrics[self.metric])]
            if has_variance:
                row.append("" if r.variance is None else f"{r.variance:.4f}")
            table.add_row(*row)
        table.add_section()
        for key, value in self.summary().items():
            table.add_row(f"[bold]{key}[/bold]", "", f"[bold]{_percent(value)}[/bold]")
        return table


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _number(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    return missing if value is None or math.isnan(value) else f"{value:.{digits}f}"


def calibration_markdown(
    section: dict[str, Any], results: Sequence[CombinationResult]
) -> list[str]:
    """The Markdown table of a results.json "calibration" section, one row per combination."""
    target = section.get("target_accuracy")
    header = (
        "| combination | T | NLL before / after | ECE before / after | AUROC | acc@90% | AURC |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if target is not None:
        header += f" coverage at {_percent(target)} (val / this split) |"
        rule += "---:|"
    lines = [f"## Calibration ({section['method']} scaling fitted on validation)", "", header, rule]
    for r in results:
        cells = [
            _number(section["temperature"][r.name], 2),
            f"{_number(section['nll_before'][r.name])} / {_number(section['nll_after'][r.name])}",
            f"{_number(section['ece_before'][r.name])} / {_number(section['ece_after'][r.name])}",
            _number(section["auroc_after"][r.name]),
            _percent(section["accuracy_at_90_after"][r.name]),
            _number(section["aurc_after"][r.name]),
        ]
        if target is not None:
            cells.append(
                f"{_percent(section['coverage_validation'][r.name])} / "
                f"{_percent(section['coverage'][r.name])}"
            )
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    pooled = section["auroc_pooled"]
    lines += [
        "",
        "Error-detection AUROC pooled over combinations: "
        + ", ".join(f"{k} {_number(v)}" for k, v in pooled.items()),
    ]
    return lines


def plot_report(report: EvaluationReport, path: Path) -> None:
    """Bars of the headline metric per combination on a zero-based axis, coloured by size
    (legend), labelled with the value and the number of samples scored; the mean as a line.
    The title names the run: the folder the plot is written into."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from dmrnet.visualize import size_colour

    values = [100 * v for v in report.values()]
    names = [r.name for r in report.results]
    sizes = [len(r.combination) for r in report.results]
    many = len(values) > 20
    fig, ax = plt.subplots(figsize=(8.5, max(3.0, 0.24 * len(values) + 1.6)))
    ax.barh(range(len(values)), values, color=[size_colour(s) for s in sizes], height=0.8)
    ax.set_yticks(range(len(values)), names, fontsize=8 if many else 9)
    ax.invert_yaxis()
    ax.set_ylim(len(values) - 0.5, -0.5)
    for row, (value, result) in enumerate(zip(values, report.results, strict=True)):
        label = "n/a" if math.isnan(value) else f"{value:.1f}%"
        ax.text(
            0 if math.isnan(value) else value,
            row,
            f" {label} (n={result.samples})",
            va="center",
            fontsize=7 if many else 8,
            # Over the mean line, readable.
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.85},
        )
    top = 100.0 if report.higher_is_better[report.metric] else max([*values, 1.0])
    ax.set_xlim(0.0, top * 1.22)  # zero-based; room right of the bars for their labels
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= top])
    ax.set_xlabel(f"{report.metric} (%)")
    mean = 100 * (report.summary()["mean"] or 0.0)
    ax.axvline(mean, color="black", linestyle="--", linewidth=1)
    handles = [
        Patch(color=size_colour(size), label=f"{size} modalit{'y' if size == 1 else 'ies'}")
        for size in sorted(set(sizes))
    ]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", label=f"mean {mean:.1f}%"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title(
        f"{path.resolve().parent.name}: {report.method} on {report.dataset} ({report.split}), "
        f"{len(values)} combinations",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_reliability(report: EvaluationReport, path: Path) -> None:
    """Reliability diagrams, one panel per combination size (the combinations of a size pooled):
    accuracy against mean confidence in the 15 equal-width confidence bins of the ECE, before and
    after temperature scaling."""
    import matplotlib

    from dmrnet.metrics import ECE_BINS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({len(c) for c in report.confidences})
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.4), squeeze=False)
    edges = torch.linspace(0, 1, ECE_BINS + 1, dtype=torch.float64)
    for ax, size in zip(axes[0], sizes, strict=True):
        parts = [v for c, v in report.confidences.items() if len(c) == size]
        correct = torch.cat([p[2] for p in parts]).double()
        for index, label in ((0, "before"), (1, "after")):
            confidence = torch.cat([p[index] for p in parts]).double()
            bins = torch.bucketize(confidence, edges[1:-1], right=True)
            counts = torch.bincount(bins, minlength=ECE_BINS)
            filled = counts > 0
            mean_confidence = torch.bincount(bins, confidence, ECE_BINS)[filled] / counts[filled]
            accuracy = torch.bincount(bins, correct, ECE_BINS)[filled] / counts[filled]
            ax.plot(mean_confidence, accuracy, marker="o", markersize=3, label=label)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{size} modalit{'y' if size == 1 else 'ies'} ({len(parts)} comb.)")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left")
    fig.suptitle(f"{report.method} on {report.dataset} ({report.split}): reliability")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_risk_coverage(report: EvaluationReport, path: Path) -> None:
    """Risk (error rate of the kept samples) against coverage when keeping the most confident
    samples by calibrated confidence, one curve per combination coloured by its size."""
    import matplotlib

    from dmrnet.metrics import sorted_by_confidence

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = max(len(c) for c in report.confidences)
    colors = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for size in range(1, largest + 1):
        label = f"{size} modalit{'y' if size == 1 else 'ies'}"
        for combination, (_, after, correct) in report.confidences.items():
            if len(combination) != size or not correct.numel():
                continue
            _, accuracy = sorted_by_confidence(after, correct)
            coverage = torch.arange(1, accuracy.numel() + 1) / accuracy.numel()
            color = colors(size / largest)
            ax.plot(coverage, 1 - accuracy, color=color, linewidth=1, alpha=0.7, label=label)
            label = None
    ax.set_xlabel("coverage (fraction of samples kept)")
    ax.set_ylabel("risk (error rate of kept samples)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{report.method} on {report.dataset} ({report.split}): risk-coverage")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {
        "inputs": {k: v.to(device) for k, v in batch["inputs"].items()},
        "present": batch["present"].to(device),
        "target": batch["target"].to(device),
    }


class CombinationEvaluator(nn.Module):
    """Accumulates a task's metrics for several combinations over batches.

    The metrics are torchmetrics objects (they synchronize across DDP processes on compute);
    sample counts and variance sums are all-reduced likewise. Used by `evaluate_combinations`
    and by the engine's validation loop.
    """

    def __init__(
        self,
        method: Any,
        combinations: Sequence[Combination] | None = None,
        calibration: Mapping[Combination, float] | None = None,
        calibrating: bool = False,
        collect: bool = False,
    ) -> None:
        """`calibration`: per-combination decision values from `calibrate_combinations` (the
        task then decides with them); `calibrating`: accumulate the task's calibration metric, if
        it has one, instead of its metrics (results then hold one value, "calibration", per
        combination); `collect`: also collect every combination's logits (`collected()`), for
        temperature scaling and the confidence metrics."""
        from dmrnet.metrics import CombinationLogits

        super().__init__()
        self.modalities: ModalitySet = method.modalities
        self.combinations = list(combinations or self.modalities.combinations())
        self.provides_variance = bool(method.provides_variance)
        self.register_buffer("masks", self.modalities.masks(self.combinations))  # (C, M)
        plain = calibration is None and not calibrating
        self.plain = plain  # the task's own metrics (`make_metrics`), fed `task.metric_input`
        # One vectorized metric for all combinations when the task offers it, else one
        # torchmetrics collection per combination.
        self.combined = (
            method.task.make_combination_metrics(len(self.combinations)) if plain else None
        )
        self.metrics = nn.ModuleList(
            []
            if self.combined is not None
            else [
                _combination_metrics(method.task, c, calibration, calibrating)
                for c in self.combinations
            ]
        )
        self.collector = (
            CombinationLogits(getattr(method.task, "ignore_index", None)) if collect else None
        )
        count = len(self.combinations)
        self.register_buffer("variance_sum", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("samples", torch.zeros(count, dtype=torch.float64))

    def reset(self) -> None:
        if self.combined is not None:
            self.combined.reset()
        for metrics in self.metrics:
            for metric in metrics.values():
                metric.reset()
        if self.collector is not None:
            self.collector.reset()
        self.variance_sum.zero_()
        self.samples.zero_()

    @torch.no_grad()
    def update(self, method: Any, batch: dict[str, Any], batched: bool = True) -> None:
        """Evaluate one batch (already on the method's device) under every combination.

        `batched=False` re-encodes for every combination (the naive loop); it exists to check
        and time the batched path, which must give the same numbers.
        """
        present, target = batch["present"], batch["target"]
        if batched:
            outputs = method.decode_many(method.encode(batch["inputs"], present), self.masks)
        else:
            outputs = [
                method(batch["inputs"], mask.expand(present.shape[0], -1)) for mask in self.masks
            ]
        # A sample counts for a combination only if it has every modality the combination uses.
        usable = (present.unsqueeze(0) | ~self.masks.unsqueeze(1)).all(-1)  # (C, B)
        self.samples += usable.sum(1)
        variance = None
        if outputs[0].variance is not None:
            variance = torch.stack([o.variance for o in outputs]).double()  # (C, B)
            self.variance_sum += (variance * usable).sum(1)
        if self.collector is not None:
            self.collector.update(
                torch.stack([o.logits for o in outputs]), target, usable, variance
            )
        if self.combined is not None:
            self.combined.update(torch.stack([o.logits for o in outputs]), target, usable)
            return
        for index, output in enumerate(outputs):
            if bool(usable[index].any()):
                rows = usable[index]
                scores = output.logits[rows]
                if self.plain:
                    scores = method.task.metric_input(scores)
                for metric in self.metrics[index].values():
                    metric.update(scores, target[rows])

    def compute(self) -> list[CombinationResult]:
        sums = torch.stack([self.samples, self.variance_sum])
        if dist.is_available() and dist.is_initialized():
            sums = sums.clone()
            dist.all_reduce(sums)
        samples, variance_sum = sums
        combined = self.combined.compute() if self.combined is not None else None
        results = []
        for index, combination in enumerate(self.combinations):
            count = int(samples[index])
            values: dict[str, float] = {}
            per_class: dict[str, list[float | None]] = {}
            if combined is not None:
                values = {
                    k: float(v[index]) if count else float("nan") for k, v in combined.items()
                }
            for name, metric in [] if combined is not None else self.metrics[index].items():
                if not count:
                    values[name] = float("nan")
                    continue
                value = metric.compute()
                if value.numel() == 1:
                    values[name] = float(value)
                else:  # a value per class; NaN (class absent) is written as None
                    per_class[name] = [None if math.isnan(v) else v for v in value.tolist()]
            results.append(
                CombinationResult(
                    combination=combination,
                    name=self.modalities.format(combination),
                    samples=count,
                    metrics=values,
                    variance=float(variance_sum[index]) / count
                    if self.provides_variance and count
                    else None,
                    per_class=per_class,
                )
            )
        return results

    def collected(self) -> dict[str, torch.Tensor]:
        """The collected logits (see `CombinationLogits.compute`); needs `collect=True`."""
        assert self.collector is not None, "built without collect=True"
        return self.collector.compute()


def _combination_metrics(
    task: Any,
    combination: Combination,
    calibration: Mapping[Combination, float] | None,
    calibrating: bool,
) -> nn.ModuleDict:
    if calibrating:
        calibration = task.make_calibration()
        return nn.ModuleDict({} if calibration is None else {"calibration": calibration})
    if calibration is not None and combination in calibration:
        return task.make_calibrated_metrics(calibration[combination])
    return task.make_metrics()


@torch.no_grad()
def evaluate_combinations(
    method: Any,
    loader: DataLoader,
    combinations: Sequence[Combination] | None = None,
    device: str | torch.device = "cpu",
    batched: bool = True,
    calibration: Mapping[Combination, float] | None = None,
    calibrating: bool = False,
) -> list[CombinationResult]:
    """Metrics of `method` on every combination (default: all 2^M - 1) over a data loader
    (`calibration` and `calibrating` as in `CombinationEvaluator`)."""
    return _evaluate_pass(
        method, loader, combinations, device, batched, calibration, calibrating
    ).compute()


@torch.no_grad()
def _evaluate_pass(
    method: Any,
    loader: DataLoader,
    combinations: Sequence[Combination] | None,
    device: str | torch.device,
    batched: bool = True,
    calibration: Mapping[Combination, float] | None = None,
    calibrating: bool = False,
    collect: bool = False,
) -> CombinationEvaluator:
    """One pass over `loader`; the evaluator holds what it accumulated."""
    evaluator = CombinationEvaluator(
        method, combinations, calibration, calibrating, collect=collect
    ).to(device)
    was_training = method.training
    method.eval()
    try:
        for batch in loader:
            evaluator.update(method, to_device(batch, device), batched=batched)
    finally:
        method.train(was_training)
    return evaluator


def calibrate_combinations(
    method: Any,
    loader: DataLoader,
    combinations: Sequence[Combination] | None = None,
    device: str | torch.device = "cpu",
) -> Calibration:
    """Calibrate every combination on held-out data (the validation split) in one pass: the
    temperatures, risk-coverage curves and variance statistics of dmrnet.calibration, and the
    task's own decision value, e.g. presentation-attack detection's equal-error threshold
    (`decision`: None when the task has none; combinations without usable samples get none,
    their metrics stay uncalibrated)."""
    started = time.perf_counter()
    evaluator = _evaluate_pass(method, loader, combinations, device, calibrating=True, collect=True)
    results = evaluator.compute()
    decision = (
        None
        if method.task.make_calibration() is None
        else {r.combination: r.metrics["calibration"] for r in results if r.samples}
    )
    calibration = fit_calibration(evaluator.collected(), evaluator.combinations, decision)
    calibration.seconds = time.perf_counter() - started
    return calibration


def build_report(
    method: Any,
    loader: DataLoader,
    dataset: str,
    method_name: str,
    split: str,
    combinations: Sequence[Combination] | None = None,
    availability_p: float = 0.5,
    device: str | torch.device = "cpu",
    calibration_loader: DataLoader | None = None,
    calibration: Calibration | None = None,
    target_accuracy: float | None = None,
    availability: dict[str, float] | None = None,
) -> EvaluationReport:
    """Evaluate and report. `calibration` (e.g. the one stored in the checkpoint), else one
    fitted on `calibration_loader` (the validation split) by `calibrate_combinations`, is
    applied: the task decides with its decision values, and the confidence metrics before and
    after temperature scaling (with the coverage that `target_accuracy` costs) are recorded
    (results.json: "calibration"). Without either, no calibration is reported."""
    task = method.task
    if calibration is None and calibration_loader is not None:
        calibration = calibrate_combinations(method, calibration_loader, combinations, device)
    evaluator = _evaluate_pass(
        method,
        loader,
        combinations,
        device,
        calibration=None if calibration is None else calibration.decision,
        collect=calibration is not None,
    )
    results = evaluator.compute()
    extra: dict[str, Any] = {}
    confidences = {}
    if calibration is not None:
        collected = evaluator.collected()
        section = confidence_report(
            collected, evaluator.combinations, calibration, method.modalities, target_accuracy
        )
        if calibration.decision is not None:
            section["decision_threshold"] = {
                method.modalities.format(c): v for c, v in calibration.decision.items()
            }
        extra["calibration"] = section
        confidences = confidence_samples(collected, evaluator.combinations, calibration)
    return EvaluationReport(
        dataset=dataset,
        method=method_name,
        split=split,
        modalities=method.modalities,
        metric=task.headline.name,
        higher_is_better={m.name: m.higher_is_better for m in task.metrics},
        results=results,
        availability_p=availability_p,
        extra=extra,
        class_names=getattr(getattr(method, "spec", None), "class_names", None),
        availability=availability,
        calibration=calibration,
        confidences=confidences,
    )


def confidence_samples(
    collected: Mapping[str, torch.Tensor],
    combinations: Sequence[Combination],
    calibration: Calibration,
) -> dict[Combination, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per combination: (confidence before, confidence after calibration, correct) of its
    usable samples, what the reliability and risk-coverage plots draw."""
    samples = {}
    for index, combination in enumerate(combinations):
        logits, target, _ = usable_samples(collected, index)
        before, prediction = logits.softmax(-1).max(-1)
        after = (logits / calibration.temperature(combination)).softmax(-1).max(-1).values
        samples[combination] = (before, after, prediction == target)
    return samples
