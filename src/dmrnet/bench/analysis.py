"""Analyses of a finished suite, from its results.json alone (never from logs): each takes one
dataset section of it (`results["datasets"][name]`) and returns plain numbers; `ANALYSES` maps the
names a suite lists under `analyses:` to the Markdown section the report adds for them.

- `paired_rungs`: an ablation ladder (the dataset's `ladder` list of the suite, else its methods in
  suite order, each one rung up from the previous; a rung `method@evaluation` is an extra
  evaluation of a method's runs) as paired per-seed differences between neighbouring rungs, with
  how many seeds the upper rung wins, ties and loses on the mean and the worst combination.
- `variance_against_error`: per run, each combination's embedding variance beside its error, and
  whether the unimodal combination with the largest variance is the one with the largest error
  (the assumption of the HCR's variance rules); with the combinations the run's HCR selected.
- `metric_tables` / `evaluation_shift`: every metric of a multi-metric task (presentation-attack
  detection: APCER, BPCER, ACER) per combination, for the runs' own evaluation and for each
  extra evaluation of the suite (e.g. `eer`: the same checkpoints decided at the validation
  split's equal-error threshold), and what the extra evaluation changes, paired by seed.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

from dmrnet.bench.report import mean_std, paired_summary
from dmrnet.calibration import calibration_analysis

Dataset = dict[str, Any]


def _value(seed: dict[str, Any], key: str) -> float | None:
    """A combination's headline value, or the summary's for key 'mean' or 'worst'."""
    return seed["summary"].get(key) if key in ("mean", "worst") else seed["combinations"].get(key)


def rung(dataset: Dataset, label: str) -> dict[str, Any]:
    """A ladder rung: a method's runs, or `method@evaluation`, an extra evaluation of them."""
    method, _, evaluation = label.partition("@")
    entry = dataset["methods"][method]
    return entry["evaluations"][evaluation] if evaluation else entry


def wins_ties_losses(
    upper: dict[str, Any], lower: dict[str, Any], key: str, higher_is_better: bool
) -> list[int]:
    """[wins, ties, losses] of `upper` over the seeds both have, on summary `key`."""
    paired = paired_summary(upper, lower, key, higher_is_better)
    return [paired["reference_losses"], paired["ties"], paired["reference_wins"]]


def paired_differences(
    upper: dict[str, Any], lower: dict[str, Any], keys: list[str]
) -> dict[str, Any]:
    """upper - lower per seed both have, for every key (a combination or 'mean')."""
    seeds = sorted(set(upper["seeds"]) & set(lower["seeds"]), key=int)
    differences = {}
    for key in keys:
        pairs = [(_value(upper["seeds"][s], key), _value(lower["seeds"][s], key)) for s in seeds]
        differences[key] = mean_std([a - b for a, b in pairs if a is not None and b is not None])
    return {"seeds": [int(s) for s in seeds], "differences": differences}


def paired_rungs(dataset: Dataset) -> list[dict[str, Any]]:
    """Each method against the one before it in the suite (an ablation ladder's rungs):
    per-seed differences (method - previous; positive = better when higher is better) of
    every combination and of the mean over combinations."""
    labels = dataset.get("ladder") or list(dataset["methods"])
    labels = [label for label in labels if label.partition("@")[0] in dataset["methods"]]
    keys = [*dataset["combinations"], "mean", "worst"]
    higher = dataset.get("higher_is_better", True)
    rows = []
    for lower, upper in pairwise(labels):
        a, b = rung(dataset, upper), rung(dataset, lower)
        rows.append(
            {
                "from": lower,
                "to": upper,
                **paired_differences(a, b, keys),
                "wins_ties_losses": {
                    k: wins_ties_losses(a, b, k, higher) for k in ("mean", "worst")
                },
            }
        )
    return rows


def variance_against_error(dataset: Dataset) -> dict[str, Any]:
    """Per run of a method with a variance: error and mean embedding variance of every
    combination, the hardest unimodal combination by each, and whether they agree (None when the
    largest unimodal error is tied); `agreed` of `counted` runs."""
    higher = dataset["higher_is_better"]
    unimodal = list(dataset["modalities"])
    rows, counted, agreed = [], 0, 0
    for label, method in dataset["methods"].items():
        for seed, result in method["seeds"].items():
            variance = result.get("variance") or {}
            if not variance:
                continue
            error = {c: (1.0 - v if higher else v) for c, v in result["combinations"].items()}
            worst_error = max(error[c] for c in unimodal)
            hardest_by_error = [c for c in unimodal if error[c] == worst_error]
            hardest_by_variance = max(unimodal, key=lambda c: variance.get(c, float("-inf")))
            agrees = None
            if len(hardest_by_error) == 1:
                agrees = hardest_by_error[0] == hardest_by_variance
                counted += 1
                agreed += agrees
            rows.append(
                {
                    "method": label,
                    "seed": int(seed),
                    "error": error,
                    "variance": variance,
                    "hardest_by_variance": hardest_by_variance,
                    "hardest_by_error": hardest_by_error,
                    "agrees": agrees,
                    "hcr_selected": (result.get("hcr") or {}).get("selected"),
                }
            )
    return {"rows": rows, "counted": counted, "agreed": agreed}


def _seeds_of(method: dict[str, Any], evaluation: str | None) -> dict[str, Any]:
    if evaluation is None:
        return method["seeds"]
    return method["evaluations"].get(evaluation, {}).get("seeds", {})


def metric_tables(dataset: Dataset, evaluation: str | None = None) -> dict[str, Any]:
    """metric -> method -> combination (and 'mean', 'worst') -> mean_std over seeds, for every
    metric the runs report (results.json "metrics"); `evaluation` names an extra evaluation
    (None: the runs' own)."""
    tables: dict[str, Any] = {}
    for label, method in dataset["methods"].items():
        seeds = list(_seeds_of(method, evaluation).values())
        metrics = [s["metrics"] for s in seeds if s.get("metrics")]
        if not metrics:
            continue
        for metric in metrics[0]:
            rows = {
                c: mean_std([m[metric]["combinations"][c] for m in metrics])
                for c in dataset["combinations"]
            }
            for key in ("mean", "worst"):
                rows[key] = mean_std([m[metric]["summary"][key] for m in metrics])
            tables.setdefault(metric, {})[label] = rows
    return tables


def evaluation_shift(dataset: Dataset, evaluation: str) -> dict[str, Any]:
    """Per method: the extra evaluation minus the runs' own, paired by seed, of every
    combination and the mean over combinations (headline metric)."""
    keys = [*dataset["combinations"], "mean"]
    shifts = {}
    for label, method in dataset["methods"].items():
        again = method["evaluations"].get(evaluation)
        if again is not None:
            shifts[label] = paired_differences(again, method, keys)
    return shifts


# -- Markdown -----------------------------------------------------------------------------------
def _pct(stat: dict[str, Any], signed: bool = False) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{100 * stat['mean']:+.2f}" if signed else f"{100 * stat['mean']:.2f}"
    return text if stat["std"] is None else f"{text} ± {100 * stat['std']:.2f}"


LADDER_COLUMNS = 7  # a ladder shows each combination up to this many, else only the summaries


def ladder_markdown(dataset: Dataset) -> list[str]:
    combinations = dataset["combinations"]
    shown = combinations if len(combinations) <= LADDER_COLUMNS else []
    keys = [*shown, "mean", "worst"]
    lines = [
        "### Ladder: each rung against the one below",
        "",
        f"{dataset['metric']} difference (rung - rung below) in points, paired by seed "
        "(mean ± std over the seeds both have); W/T/L: seeds on which the upper rung is better / "
        "equal / worse"
        + ("." if shown else f" (the {len(combinations)} combinations: mean and worst only)."),
        "",
        "| rung | seeds | " + " | ".join(keys) + " | W/T/L (mean) | W/T/L (worst) |",
        "|---|---:|" + "---:|" * (len(keys) + 2),
    ]
    for row in paired_rungs(dataset):
        cells = [_pct(row["differences"][k], True) for k in keys]
        cells += ["/".join(map(str, row["wins_ties_losses"][k])) for k in ("mean", "worst")]
        lines.append(
            f"| {row['to']} - {row['from']} | {len(row['seeds'])} | " + " | ".join(cells) + " |"
        )
    return lines


def variance_markdown(dataset: Dataset) -> list[str]:
    found = variance_against_error(dataset)
    if not found["rows"]:
        return ["### Embedding variance beside the error", "", "No method reports a variance."]
    combinations = dataset["combinations"]
    lines = [
        "### Embedding variance beside the error",
        "",
        "Each cell: test error (%) / mean embedding variance of the combination (for a "
        "lower-is-better metric the error is the metric itself). `agrees`: the unimodal "
        "combination with the largest variance is the one with the largest error (the HCR's "
        "variance rules assume so). `HCR selected`: what the run's HCR picked, from training "
        "statistics (results.json `hcr`).",
        "",
        "| method | seed | " + " | ".join(combinations) + " | agrees | HCR selected |",
        "|---|---:|" + "---:|" * len(combinations) + "---|---|",
    ]
    for row in found["rows"]:
        cells = [
            f"{100 * row['error'][c]:.1f} / "
            + ("–" if c not in row["variance"] else f"{row['variance'][c]:.3f}")
            for c in combinations
        ]
        agrees = {True: "yes", False: "no", None: "tie in error"}[row["agrees"]]
        selected = ", ".join(row["hcr_selected"]) if row["hcr_selected"] else "–"
        lines.append(
            f"| {row['method']} | {row['seed']} | " + " | ".join(cells) + f" | {agrees} | "
            f"{selected} |"
        )
    lines += [
        "",
        f"The largest unimodal variance went with the largest unimodal error in "
        f"{found['agreed']} of {found['counted']} runs (runs with a tie in error not counted).",
    ]
    return lines


def metrics_markdown(dataset: Dataset) -> list[str]:
    lines: list[str] = []
    for evaluation in [None, *dataset.get("evaluations", [])]:
        tables = metric_tables(dataset, evaluation)
        if not tables:
            continue
        title = "the runs' own evaluation" if evaluation is None else f"evaluation `{evaluation}`"
        labels = list(next(iter(tables.values())))
        lines += [
            f"### Every metric, {title}",
            "",
            "Mean ± std over seeds, in %.",
            "",
            "| combination | "
            + " | ".join(f"{m.upper()} {label}" for m in tables for label in labels)
            + " |",
            "|---|" + "---:|" * (len(tables) * len(labels)),
        ]
        for key in [*dataset["combinations"], "mean", "worst"]:
            cells = [_pct(tables[m][label][key]) for m in tables for label in labels]
            name = key if key in dataset["combinations"] else f"**{key}**"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if evaluation is not None:
            shifts = evaluation_shift(dataset, evaluation)
            lines += [
                "",
                f"{dataset['metric']} of evaluation `{evaluation}` minus the runs' own, mean over "
                "combinations, paired by seed (points): "
                + "; ".join(
                    f"{label} {_pct(shift['differences']['mean'], True)}"
                    for label, shift in shifts.items()
                )
                + ".",
            ]
            paired = {
                label: method["evaluations"][evaluation]["comparison"]["mean"]
                for label, method in dataset["methods"].items()
                if "comparison" in method["evaluations"].get(evaluation, {})
            }
            if paired:
                lines += [
                    "",
                    f"Evaluation `{evaluation}`, each method minus the reference on the mean over "
                    "combinations, paired by seed (points; the reference better / equal / worse "
                    "on how many seeds): "
                    + "; ".join(
                        f"{label} {_pct(c['difference'], True)} ({c['reference_wins']}/"
                        f"{c['ties']}/{c['reference_losses']})"
                        for label, c in paired.items()
                    )
                    + ".",
                ]
        lines.append("")
    return lines


ANALYSES: dict[str, Callable[[Dataset], list[str]]] = {
    "ladder": ladder_markdown,
    "variance": variance_markdown,
    "metrics": metrics_markdown,
    "calibration": calibration_analysis,  # dmrnet.calibration: ECE, AUROC, coverage per method
}
