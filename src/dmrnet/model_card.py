"""MODEL_CARD.md: what a trained run is, what it was measured to do, and how not to use it.

Written into every run directory with the results (`runs.train`), from the run's config, its data
description and its every-combination report, so the card states only measured facts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dmrnet.config import Config
from dmrnet.data.base import DataSpec
from dmrnet.evaluate import EvaluationReport

CARD = "MODEL_CARD.md"


def _value(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def model_card(config: Config, spec: DataSpec, report: EvaluationReport) -> str:
    """The card's Markdown text."""
    metric = report.metric
    higher = report.higher_is_better[metric]
    name = config.name or f"{config.model.method} on {spec.name}"
    encoder = getattr(config.model, "encoder", None)  # the vector family names its encoders
    lines = [
        f"# Model card: {name}",
        "",
        f"A `{config.model.method}` model for **{spec.task}** on the **{spec.name}** dataset that "
        f"predicts from any non-empty subset of its {len(spec.modalities)} modalities "
        f"({'+'.join(spec.modalities.names)}). Trained by dmrnet (`dmrnet train`), seed "
        f"{config.seed}, {config.train.epochs} epochs; the weights are checkpoints/best.ckpt.",
        "",
        "## Inputs",
        "",
        "| modality | sample shape |",
        "|---|---|",
    ]
    lines += [f"| {m} | {tuple(spec.input_shapes[m])} |" for m in spec.modalities.names]
    classes = ", ".join(spec.class_names) if spec.class_names else "unnamed (0..K-1)"
    lines += [
        "",
        f"Raw (unstandardized) values: the model standardizes with its training statistics. A "
        f"modality is missing for a sample when it is not given or all its values are NaN. "
        f"Output: {spec.num_classes} classes ({classes}).",
        "",
        "## Method",
        "",
        f"- method: `{config.model.method}`"
        + (f"; encoder `{encoder.name}` {dict(encoder.options)}" if encoder else ""),
        f"- training-time modality sampler: `{config.model.sampler.kind}`",
        f"- data: `{config.data.name}` {dict(config.data.options) or ''}".rstrip(),
        "",
        f"## Measured: {metric} on the {report.split} split, per modality combination",
        "",
        f"{len(report.results)} combinations; {'higher' if higher else 'lower'} is better. Under "
        "real missingness a combination is scored only on the samples that have all its "
        "modalities, hence the sample counts.",
        "",
        "| summary | value |",
        "|---|---:|",
    ]
    lines += [f"| {key} | {_value(value)} |" for key, value in report.summary().items()]
    ranked = sorted(report.results, key=lambda r: r.metrics[metric], reverse=higher)
    lines += ["", "| by size | combinations | mean | worst combination |", "|---:|---:|---:|---|"]
    for size in sorted({len(r.combination) for r in report.results}):
        group = [r for r in ranked if len(r.combination) == size]
        mean = sum(r.metrics[metric] for r in group) / len(group)
        worst = group[-1]
        lines.append(
            f"| {size} | {len(group)} | {_value(mean)} | {worst.name} "
            f"({_value(worst.metrics[metric])}, {worst.samples} samples) |"
        )
    lines += [
        "",
        f"Best: {ranked[0].name} ({_value(ranked[0].metrics[metric])}); worst: "
        f"{ranked[-1].name} ({_value(ranked[-1].metrics[metric])}). Every combination: "
        "results.md, results.csv, results.png.",
        "",
        "## Calibration",
        "",
        calibration_text(report.extra.get("calibration")),
        "",
        "## Intended use and limits",
        "",
        f"- Intended: research and evaluation of robustness to missing modalities on {spec.name}-"
        "like data, and as a baseline for deployments that lose sensors.",
        "- The figures above hold for this dataset's test split only; data from other sensors, "
        "preprocessing or populations can score differently, and nothing here was measured on it.",
        f"- With fewer modalities the model is less accurate: plan for the worst combination "
        f"({ranked[-1].name}), not the mean.",
        "- `variance` (methods with a Gaussian embedding) ranks how uncertain an embedding is; it "
        "is not a probability of being wrong.",
        "- Not for decisions about people without an independent validation on the target data.",
        "",
        "## Use",
        "",
        "```bash",
        "dmrnet predict RUN_DIR inputs.npz --probabilities      # or a CSV, or a .mat",
        "dmrnet export RUN_DIR --format onnx                    # see docs/deploy.md",
        "```",
        "",
    ]
    return "\n".join(lines)


def calibration_text(calibration: Any) -> str:
    """The results.json "calibration" section in words (docs/calibration.md)."""
    if not calibration:
        return "None: probabilities are the softmax of the model's logits."
    temperatures = calibration.get("temperature", {})
    shown = ", ".join(f"{k}: T = {v:.3g}" for k, v in list(temperatures.items())[:6])
    more = f" (and {len(temperatures) - 6} more)" if len(temperatures) > 6 else ""
    text = (
        "Temperature scaling per combination, fitted on the validation split after training "
        f"(results.json: calibration): {shown}{more}."
    )
    thresholds = calibration.get("decision_threshold") or {}
    if thresholds:
        text += (
            f" Decision thresholds per combination ({len(thresholds)} of them) are applied by "
            "evaluate and predict."
        )
    return text


def write_model_card(
    run_dir: str | Path, config: Config, spec: DataSpec, report: EvaluationReport
) -> Path:
    path = Path(run_dir) / CARD
    path.write_text(model_card(config, spec, report))
    return path
