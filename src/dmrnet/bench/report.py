"""Benchmark results: aggregation over seeds, paired comparison with the reference method, and the
Markdown report (tables + figures) and JSON file.

Statistics: mean and sample standard deviation (n - 1) over seeds; a method is compared with the
reference seed by seed (same seed = same validation split and the same data order), as the
difference method - reference, and as the reference's wins, ties and losses over the seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUMMARY_KEYS = ("mean", "worst", "full", "expected")
SUMMARY_TITLES = {
    "mean": "mean over combinations",
    "worst": "worst combination",
    "full": "all modalities",
    "expected": "expected, p = 0.5",
}
SPEEDUP_TARGET = 5.0
# Kept per seed from each run's results.json, for the analyses (dmrnet.bench.analysis).
SEED_DETAILS = ("samples", "variance", "metrics", "hcr", "calibration")


def mean_std(values: Sequence[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summary_key(key: str) -> str:
    """results.json names the expected value `expected_p<p>`; the bench calls it `expected`."""
    return "expected" if key.startswith("expected_p") else key


def aggregate_method(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per-seed results.json contents -> per-combination and summary mean +- std."""
    seeds = sorted(results)
    names = list(results[seeds[0]]["combinations"])
    summaries = {
        seed: {summary_key(k): v for k, v in results[seed]["summary"].items()} for seed in seeds
    }
    return {
        "seeds": {
            str(seed): {
                "combinations": results[seed]["combinations"],
                "summary": summaries[seed],
                **{k: results[seed][k] for k in SEED_DETAILS if k in results[seed]},
            }
            for seed in seeds
        },
        "combinations": {
            name: mean_std([results[s]["combinations"][name] for s in seeds]) for name in names
        },
        "summary": {key: mean_std([summaries[s].get(key) for s in seeds]) for key in SUMMARY_KEYS},
    }


def paired_summary(
    method: dict[str, Any], reference: dict[str, Any], key: str, higher_is_better: bool
) -> dict[str, Any]:
    """Summary `key` (mean, worst, ...) paired over the seeds both have: the differences
    (method - reference) and the reference's wins / ties / losses."""
    seeds = set(method["seeds"]) & set(reference["seeds"])
    sign = 1.0 if higher_is_better else -1.0
    pairs = [
        (method["seeds"][s]["summary"].get(key), reference["seeds"][s]["summary"].get(key))
        for s in sorted(seeds, key=int)
    ]
    pairs = [(m, r) for m, r in pairs if m is not None and r is not None]
    return {
        "difference": mean_std([m - r for m, r in pairs]),
        "reference_wins": sum(sign * (r - m) > 0 for m, r in pairs),
        "ties": sum(m == r for m, r in pairs),
        "reference_losses": sum(sign * (m - r) > 0 for m, r in pairs),
    }


def compare(
    method: dict[str, Any], reference: dict[str, Any], higher_is_better: bool
) -> dict[str, Any]:
    """Paired comparison over the seeds both have: differences (method - reference) of every
    summary, the reference's wins/ties/losses, and per combination (mean over seeds) how often
    each is better."""
    seeds = sorted(set(method["seeds"]) & set(reference["seeds"]), key=int)
    sign = 1.0 if higher_is_better else -1.0
    out: dict[str, Any] = {"seeds": [int(s) for s in seeds]}
    for key in SUMMARY_KEYS:
        out[key] = paired_summary(method, reference, key, higher_is_better)
    better = worse = 0
    for name, value in method["combinations"].items():
        ours, theirs = reference["combinations"][name]["mean"], value["mean"]
        if ours is None or theirs is None:
            continue
        better += sign * (ours - theirs) > 0
        worse += sign * (theirs - ours) > 0
    out["combinations_reference_better"] = better
    out["combinations_method_better"] = worse
    out["combinations"] = len(method["combinations"])
    return out


def leaders(methods: dict[str, dict[str, Any]], higher_is_better: bool) -> dict[str, str]:
    """The method with the best seed-mean of each summary."""
    best = {}
    for key in SUMMARY_KEYS:
        scored = [
            (m["summary"][key]["mean"], label)
            for label, m in methods.items()
            if m["summary"][key]["mean"] is not None
        ]
        if scored:
            pick = max if higher_is_better else min
            best[key] = pick(scored)[1]
    return best


# -- Markdown ---------------------------------------------------------------------------------
def _pct(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _pct_std(stat: dict[str, Any], signed: bool = False) -> str:
    text = _pct(stat["mean"], signed)
    return text if stat.get("std") is None else f"{text} ± {100 * stat['std']:.2f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def lead_statements(dataset: dict[str, Any], reference: str) -> list[str]:
    """Plain sentences: does the reference lead on mean and on worst combination?"""
    lines = []
    methods = dataset["methods"]
    higher = dataset["higher_is_better"]
    for key in ("mean", "worst"):
        leader = dataset["leaders"].get(key)
        if leader is None or reference not in methods:
            continue
        title = SUMMARY_TITLES[key]
        ours = methods[reference]["summary"][key]["mean"]
        if leader == reference:
            others = [
                (m["summary"][key]["mean"], label)
                for label, m in methods.items()
                if label != reference and m["summary"][key]["mean"] is not None
            ]
            if others:
                value, runner_up = (max if higher else min)(others)
                lines.append(
                    f"**{reference} leads on the {title}**: {_pct(ours)}, ahead of {runner_up} "
                    f"({_pct(value)}) by {abs(100 * (ours - value)):.2f} points."
                )
            continue
        theirs = methods[leader]["summary"][key]["mean"]
        paired = methods[leader]["comparison"][key]
        n = len(methods[leader]["comparison"]["seeds"])
        lines.append(
            f"**{reference} does not lead on the {title}**: {leader} has {_pct(theirs)} against "
            f"{reference}'s {_pct(ours)} ({abs(100 * (theirs - ours)):.2f} points; {leader} is "
            f"better on {paired['reference_losses']} of {n} seeds)."
        )
    return lines


def speed_statement(dataset: dict[str, Any], reference: str) -> str | None:
    speed = dataset["methods"].get(reference, {}).get("speed")
    if not speed or speed.get("evaluation", {}).get("speedup") is None:
        return None
    evaluation = speed["evaluation"]
    ratio = evaluation["speedup"]
    verdict = "met" if ratio >= SPEEDUP_TARGET else "**not met**"
    return (
        f"Evaluating all {evaluation['combinations']} combinations of {reference} in one pass took "
        f"{1000 * evaluation['one_pass_s']:.1f} ms against {1000 * evaluation['loop_s']:.1f} ms "
        f"for the per-combination loop: {ratio:.1f}x faster (target >= {SPEEDUP_TARGET:g}x: "
        f"{verdict})."
    )


def dataset_markdown(
    name: str, dataset: dict[str, Any], reference: str, figures: dict[str, str]
) -> list[str]:
    methods = dataset["methods"]
    metric = dataset["metric"]
    seeds = dataset["seeds"]
    lines = [
        f"## {name}",
        "",
        f"{metric} on the {dataset['split']} split ({len(dataset['combinations'])} modality "
        f"combinations of {', '.join(dataset['modalities'])}), in %, mean ± standard deviation "
        f"over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}).",
        "",
    ]
    lines += [f"- {s}" for s in lead_statements(dataset, reference)]
    statement = speed_statement(dataset, reference)
    if statement:
        lines.append(f"- {statement}")
    lines += [
        "",
        "### Summaries",
        "",
        "| method | config | "
        + " | ".join(SUMMARY_TITLES[k] for k in SUMMARY_KEYS)
        + " | training wall time (s) |",
        "|---|---|" + "---:|" * (len(SUMMARY_KEYS) + 1),
    ]
    for label, m in methods.items():
        cells = [_pct_std(m["summary"][k]) for k in SUMMARY_KEYS]
        wall = m.get("train_wall_s") or {}
        lines.append(
            f"| {label} | `{m['config']}` | " + " | ".join(cells) + f" | {_num(wall.get('mean'))} |"
        )
    lines += [
        "",
        "Training wall time: one whole run (training, validation of every combination each "
        "epoch, the final test evaluation), mean over seeds; it depends on the load of the "
        "machine at the time.",
    ]
    if "summaries" in figures:
        lines += ["", f"![summaries]({figures['summaries']})"]
    lines += _comparison_table(methods, reference)
    lines += _speed_table(methods)
    lines += _combination_table(dataset, figures)
    return lines


def _comparison_table(methods: dict[str, dict[str, Any]], reference: str) -> list[str]:
    if reference not in methods:
        return ["", f"No results of {reference} in this selection: no paired comparison."]
    lines = [
        "",
        f"### Paired comparison with {reference}",
        "",
        f"Differences are method - {reference} in points (mean ± std over the paired seeds); "
        f"W/T/L counts the seeds on which {reference} is better / equal / worse; the last column "
        f"counts combinations (mean over seeds) on which {reference} / the method is better.",
        "",
        "| method | Δ mean | W/T/L (mean) | Δ worst | W/T/L (worst) | Δ all modalities | "
        f"Δ expected | combinations {reference} / method better |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, m in methods.items():
        if label == reference:
            continue
        c = m["comparison"]

        def wtl(key: str, comparison: dict[str, Any] = c) -> str:
            part = comparison[key]
            return f"{part['reference_wins']}/{part['ties']}/{part['reference_losses']}"

        lines.append(
            f"| {label} | {_pct_std(c['mean']['difference'], True)} | {wtl('mean')} | "
            f"{_pct_std(c['worst']['difference'], True)} | {wtl('worst')} | "
            f"{_pct_std(c['full']['difference'], True)} | "
            f"{_pct_std(c['expected']['difference'], True)} | "
            f"{c['combinations_reference_better']} / {c['combinations_method_better']} |"
        )
    return lines


def _speed_table(methods: dict[str, dict[str, Any]]) -> list[str]:
    rows = [(label, m["speed"]) for label, m in methods.items() if m.get("speed")]
    if not rows:
        return []
    device = rows[0][1].get("device", "cpu")
    lines = [
        "",
        "### Speed and memory",
        "",
        f"Measured on the first seed's trained model, device `{device}`, one method after the "
        "other: on a shared machine the load can differ between rows, so compare the ratio "
        "column (both timings of a row alternate) more than absolute times across rows. "
        "Training: samples/s of the training step (dropout mask, forward, loss, backward, "
        "optimizer step; for a multi-stage method its final stage), median of the repeats. "
        "Evaluation: every combination of the test split, "
        "encoders once + `decode_many` (one pass) against re-encoding per combination "
        "(`evaluate_combinations(..., batched=False)`), and against one full-modality forward pass "
        "(what evaluating only the full set costs), median of the repeats, timed in turn. "
        "Peak memory, in a fresh process, above the level with the data loaded and no "
        "model yet (CPU: resident set size; CUDA: allocated memory): training counts the "
        "weights, gradients, optimizer state and activations, evaluation the weights and one "
        "pass over every combination.",
        "",
        "| method | parameters | training samples/s | one pass (ms) | per-combination loop (ms) "
        "| loop / one pass | one pass / full-modality pass | same results | peak memory training "
        "(MiB) | peak memory evaluation (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label, speed in rows:
        training, evaluation = speed.get("training", {}), speed.get("evaluation", {})
        same = evaluation.get("max_metric_difference")
        lines.append(
            f"| {label} | {_num(training.get('parameters'), 0)} | "
            f"{_num(training.get('samples_per_s'), 0)} | "
            f"{_num(_ms(evaluation.get('one_pass_s')))} | {_num(_ms(evaluation.get('loop_s')))} | "
            f"{_num(evaluation.get('speedup'))}x | "
            f"{_num(evaluation.get('one_pass_over_full'), 2)}x | "
            f"{'–' if same is None else ('yes' if same < 1e-6 else f'no ({same:.2g})')} | "
            f"{_num(training.get('peak_memory_mib'))} | {_num(evaluation.get('peak_memory_mib'))} |"
        )
    return lines


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def _combination_table(dataset: dict[str, Any], figures: dict[str, str]) -> list[str]:
    methods = dataset["methods"]
    lines = ["", "### Every combination", ""]
    if "combinations" in figures:
        lines += [f"![every combination]({figures['combinations']})", ""]
    labels = list(methods)
    lines += [
        "| combination | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name in dataset["combinations"]:
        cells = [_pct_std(methods[label]["combinations"][name]) for label in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(
    results: dict[str, Any], figures: dict[str, dict[str, str]], title: str | None = None
) -> str:
    from dmrnet.bench.analysis import ANALYSES  # it builds on this module's statistics

    machine = results["machine"]
    lines = [
        title or f"# dmrnet benchmarks: suite `{results['suite']}`",
        "",
        f"Generated by `{results['command']}` on {results['date']}.",
        "",
        f"Machine: {machine['summary']}.",
        "",
    ]
    if results.get("description"):
        lines += [results["description"].strip(), ""]
    if results.get("overrides"):
        shown = ", ".join(f"`{o}`" for o in results["overrides"])
        lines += [f"Overrides applied to every run: {shown}.", ""]
    if results.get("notes"):
        lines += [f"- {note}" for note in results["notes"]] + [""]
    for name, dataset in results["datasets"].items():
        lines += dataset_markdown(name, dataset, results["reference"], figures.get(name, {}))
        for analysis in dataset.get("analyses", []):
            lines += ["", *ANALYSES[analysis](dataset)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# -- figures ----------------------------------------------------------------------------------
# One colour per number of modalities in a combination, the same in every figure (tab10 order).
SIZE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
# One colour per summary, the same in every summaries figure.
SUMMARY_COLOURS = {"mean": "#4c72b0", "worst": "#c44e52", "full": "#55a868", "expected": "#8172b3"}


def size_colour(size: int) -> str:
    """The colour of combinations of `size` modalities (1-based), in every dmrnet figure."""
    return SIZE_COLOURS[(size - 1) % len(SIZE_COLOURS)]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wrap(title: str, inches: float) -> str:
    """A title broken into lines that fit `inches` of figure width (about 11 characters each)."""
    import textwrap

    return textwrap.fill(title, width=max(30, int(11 * inches)))


def _seeds_phrase(dataset: dict[str, Any]) -> str:
    count = len(dataset["seeds"])
    return "1 seed" if count == 1 else f"mean ± std over {count} seeds"


def plot_combinations(dataset: dict[str, Any], title: str, path: Path, reference: str) -> None:
    """Methods (rows) x combinations (columns), one panel per combination size (panel titles in
    the size colours): every cell shows the metric in % (mean over seeds); its colour is the
    difference from the reference in points, blue where the method is better."""
    import numpy as np

    plt = _pyplot()
    labels = list(dataset["methods"])
    names = dataset["combinations"]
    sizes = [name.count("+") + 1 for name in names]
    values = np.array(
        [
            [
                np.nan
                if (v := dataset["methods"][m]["combinations"][n]["mean"]) is None
                else 100 * v
                for n in names
            ]
            for m in labels
        ]
    )
    sign = 1.0 if dataset["higher_is_better"] else -1.0
    if reference in labels:
        shade = sign * (values - values[labels.index(reference)])
        finite = np.isfinite(shade)
        bound = max(float(np.abs(shade[finite]).max()) if finite.any() else 0.0, 0.5)
        limits, cmap = (-bound, bound), "RdBu"
        colour_label = f"points better (+) or worse (−) than {reference}"
    else:
        shade = values
        finite = np.isfinite(values)
        limits = (float(np.nanmin(values)), float(np.nanmax(values))) if finite.any() else (0, 1)
        cmap, colour_label = "viridis", f"{dataset['metric']} (%)"
    digits = 1 if np.nanmax(np.abs(values), initial=0.0) >= 10 else 2
    groups = [[i for i, s in enumerate(sizes) if s == size] for size in sorted(set(sizes))]
    widest = max(len(g) for g in groups)
    # Layout in inches, so cells and labels keep their size whatever the number of columns.
    left, right, cell_h, title_h = 1.9, 1.6, 0.3, 0.35
    cell_w = min(1.2, max(0.5, (7.0 - left - right) / widest))
    label_h = [0.08 * max(len(names[i]) for i in g) + 0.25 for g in groups]
    panel_h = cell_h * len(labels)
    width = left + widest * cell_w + right
    height = 0.8 + sum(title_h + panel_h + h for h in label_h)
    fig = plt.figure(figsize=(width, height))
    fig.suptitle(_wrap(title, width), fontsize=10, y=1 - 0.1 / height, va="top")
    top = height - 0.8
    image = None
    for group, below in zip(groups, label_h, strict=True):
        top -= title_h + panel_h
        ax = fig.add_axes(
            (left / width, top / height, len(group) * cell_w / width, panel_h / height)
        )
        image = ax.imshow(shade[:, group], aspect="auto", cmap=cmap, vmin=limits[0], vmax=limits[1])
        for row in range(len(labels)):
            for column, index in enumerate(group):
                value = values[row, index]
                if not np.isfinite(value):
                    continue
                strong = (
                    abs(shade[row, index] - sum(limits) / 2) > 0.6 * (limits[1] - limits[0]) / 2
                )
                ax.text(
                    column,
                    row,
                    f"{value:.{digits}f}",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white" if strong else "black",
                )
        size = sizes[group[0]]
        ax.set_title(
            f"{size} modalit{'y' if size == 1 else 'ies'} ({len(group)} combination"
            f"{'' if len(group) == 1 else 's'})",
            fontsize=9,
            loc="left",
            color=size_colour(size),
            fontweight="bold",
        )
        ax.set_yticks(range(len(labels)), labels, fontsize=9)
        ax.set_xticks(range(len(group)), [names[i] for i in group], rotation=90, fontsize=8.5)
        top -= below
    colour_axes = fig.add_axes(((width - right + 0.3) / width, 0.25, 0.15 / width, 0.5))
    fig.colorbar(image, cax=colour_axes).set_label(colour_label, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_summaries(dataset: dict[str, Any], title: str, path: Path) -> None:
    """Grouped bars on a zero-based axis: every method's summaries with their values written
    on the bars, and the standard deviation over seeds only where there are several seeds."""
    import numpy as np

    plt = _pyplot()
    labels = list(dataset["methods"])
    fig, ax = plt.subplots(figsize=(max(8.0, 0.95 * len(labels) + 4.5), 5.2))
    width = 0.8 / len(SUMMARY_KEYS)
    bars = {}
    for key in SUMMARY_KEYS:
        stats = [dataset["methods"][m]["summary"][key] for m in labels]
        means = np.array([np.nan if s["mean"] is None else 100 * s["mean"] for s in stats])
        errors = np.array([np.nan if s.get("std") is None else 100 * s["std"] for s in stats])
        bars[key] = (means, errors)
    reach = [np.nanmax(m + np.nan_to_num(e)) for m, e in bars.values() if np.isfinite(m).any()]
    # Zero-based; a higher-is-better percentage keeps its natural 0-100 scale.
    top = 100.0 if dataset["higher_is_better"] else max([*reach, 1e-3])
    digits = 1 if top >= 10 else 2
    for i, (key, (means, errors)) in enumerate(bars.items()):
        positions = np.arange(len(labels)) + (i - (len(SUMMARY_KEYS) - 1) / 2) * width
        ax.bar(positions, means, width, color=SUMMARY_COLOURS[key], label=SUMMARY_TITLES[key])
        has = np.isfinite(errors) & np.isfinite(means)
        if has.any():  # error bars only where there is a spread (several seeds)
            ax.errorbar(
                positions[has],
                means[has],
                yerr=errors[has],
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
                capsize=2,
            )
        for x, mean, error in zip(positions, means, np.nan_to_num(errors), strict=True):
            if np.isfinite(mean):  # the value, just above the bar and its error bar
                ax.text(
                    x,
                    mean + error + 0.012 * top,
                    f"{mean:.{digits}f}",
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=7,
                )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=9)
    ax.set_ylabel(f"{dataset['metric']} (%)")
    ax.set_ylim(0, top * 1.18)  # headroom for the value labels
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= top])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="summary")
    ax.set_title(
        _wrap(f"{title} ({_seeds_phrase(dataset)})", fig.get_figwidth() - 2.5), fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(
    results: dict[str, Any], report: Path, figures_dir: Path, json_path: Path | None = None
) -> list[Path]:
    """The Markdown report (figure links relative to it), its figures and the JSON file."""
    import os

    figures_dir.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    written = []
    links: dict[str, dict[str, str]] = {}
    for name, dataset in results["datasets"].items():
        paths = {
            "summaries": figures_dir / f"{results['suite']}-{name}-summaries.png",
            "combinations": figures_dir / f"{results['suite']}-{name}-combinations.png",
        }
        where = f"suite {results['suite']}, {name}"
        plot_summaries(
            dataset,
            f"{where}: {dataset['metric']} summaries over {len(dataset['combinations'])} "
            "combinations",
            paths["summaries"],
        )
        plot_combinations(
            dataset,
            f"{where}: {dataset['metric']} (%) per combination, {_seeds_phrase(dataset)} "
            "(cell: the mean over seeds)",
            paths["combinations"],
            results["reference"],
        )
        written += list(paths.values())
        links[name] = {
            k: Path(os.path.relpath(p, report.parent)).as_posix() for k, p in paths.items()
        }
    report.write_text(render_markdown(results, links))
    written.append(report)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        written.append(json_path)
    return written
