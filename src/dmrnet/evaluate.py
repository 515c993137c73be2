"""Every-combination evaluation and its reports.

Encoders run once per batch; `decode_many` then decodes all requested combinations from the same
features, so evaluating all 2^M - 1 combinations costs about one forward pass. A sample counts
for a combination only if it really has every modality the combination uses (real missingness).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from dmrnet.files import atomic_write, save_figure, write_text
from dmrnet.modalities import Combination, ModalitySet

RESULT_FILES = ("results.json", "results.csv", "results.md", "results.png")


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

    def values(self, metric: str | None = None) -> list[float]:
        metric = metric or self.metric
        return [r.metrics[metric] for r in self.results]

    def summary(self, metric: str | None = None) -> dict[str, float | None]:
        metric = metric or self.metric
        from dmrnet.metrics import summarize  # lazy: torchmetrics is slow to import

        return summarize(
            self.values(metric),
            [r.combination for r in self.results],
            self.modalities,
            higher_is_better=self.higher_is_better[metric],
            availability_p=self.availability_p,
        )

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
        return paths

    def _write_csv(self, path: Path) -> None:
        metrics = list(self.higher_is_better)
        with atomic_write(path, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["combination", "size", "samples", *metrics, "variance"])
            for r in self.results:
                writer.writerow(
                    [r.name, len(r.combination), r.samples]
                    + [f"{r.metrics[m]:.6f}" for m in metrics]
                    + ["" if r.variance is None else f"{r.variance:.6f}"]
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
    ) -> None:
        """`calibration`: per-combination values from `calibrate_combinations` (the task then
        decides with them); `calibrating`: accumulate the task's calibration metric instead of
        its metrics (results then hold one value, "calibration", per combination)."""
        super().__init__()
        self.modalities: ModalitySet = method.modalities
        self.combinations = list(combinations or self.modalities.combinations())
        self.provides_variance = bool(method.provides_variance)
        self.register_buffer("masks", self.modalities.masks(self.combinations))  # (C, M)
        plain = calibration is None and not calibrating
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
        count = len(self.combinations)
        self.register_buffer("variance_sum", torch.zeros(count, dtype=torch.float64))
        self.register_buffer("samples", torch.zeros(count, dtype=torch.float64))

    def reset(self) -> None:
        if self.combined is not None:
            self.combined.reset()
        for metrics in self.metrics:
            for metric in metrics.values():
                metric.reset()
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
        if outputs[0].variance is not None:
            variance = torch.stack([o.variance for o in outputs]).double()  # (C, B)
            self.variance_sum += (variance * usable).sum(1)
        if self.combined is not None:
            self.combined.update(torch.stack([o.logits for o in outputs]), target, usable)
            return
        for index, output in enumerate(outputs):
            if bool(usable[index].any()):
                for metric in self.metrics[index].values():
                    metric.update(output.logits[usable[index]], target[usable[index]])

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


def _combination_metrics(
    task: Any,
    combination: Combination,
    calibration: Mapping[Combination, float] | None,
    calibrating: bool,
) -> nn.ModuleDict:
    if calibrating:
        return nn.ModuleDict({"calibration": task.make_calibration()})
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
    evaluator = CombinationEvaluator(method, combinations, calibration, calibrating).to(device)
    was_training = method.training
    method.eval()
    try:
        for batch in loader:
            evaluator.update(method, to_device(batch, device), batched=batched)
    finally:
        method.train(was_training)
    return evaluator.compute()


def calibrate_combinations(
    method: Any,
    loader: DataLoader,
    combinations: Sequence[Combination] | None = None,
    device: str | torch.device = "cpu",
) -> dict[Combination, float] | None:
    """The task's calibration value per combination on held-out data (the validation split),
    e.g. presentation-attack detection's equal-error threshold; None when the task has none.
    Combinations without usable samples get none (their metrics stay uncalibrated)."""
    if method.task.make_calibration() is None:
        return None
    results = evaluate_combinations(method, loader, combinations, device=device, calibrating=True)
    return {r.combination: r.metrics["calibration"] for r in results if r.samples}


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
) -> EvaluationReport:
    """Evaluate and report. A task that calibrates its decisions (see `Task.make_calibration`)
    is calibrated on `calibration_loader` (the validation split) first, and the values are
    recorded in the report (results.json: "calibration")."""
    task = method.task
    calibration = (
        None
        if calibration_loader is None
        else calibrate_combinations(method, calibration_loader, combinations, device=device)
    )
    results = evaluate_combinations(
        method, loader, combinations, device=device, calibration=calibration
    )
    extra: dict[str, Any] = {}
    if calibration is not None:
        extra["calibration"] = {
            "split": "validation",
            "values": {method.modalities.format(c): v for c, v in calibration.items()},
        }
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
    )
