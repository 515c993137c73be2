"""The ablation ladder on AV-Digits (hard preset), over seeds, written to docs/results/avdigits.md.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/avdigits_ladder.py

Trains (in src/dmrnet/configs/)
avdigits/{moddrop,moddrop-hcr,dmrnet-no-hcr,dmrnet}.yaml with seeds 0, 1, 2 (one
run at a time, one thread), each into runs/avdigits-ladder/<config>/seed<seed>/, then reports the
test accuracy of audio, image and both (mean +- std over seeds), the per-combination embedding
variance beside the error, the hard combination each HCR run selected, and the wall time per run.
A run directory that already holds results.json and timing.json is reused (delete it to retrain;
one trained with another config is an error); `--report-only` rewrites the report from existing
runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch
import yaml

from dmrnet.config import load_config
from dmrnet.runs import train

CONFIGS = ("moddrop", "moddrop-hcr", "dmrnet-no-hcr", "dmrnet")
COMBINATIONS = ("audio", "image", "audio+image")
ROOT = Path(__file__).resolve().parents[1]
# Everything below this line in the report is hand-written and kept when the report is rewritten.
NOTES_MARKER = "<!-- notes: kept when benchmarks/avdigits_ladder.py rewrites this file -->"


def run_one(config_name: str, seed: int, runs: Path, overrides: list[str]) -> Path:
    run_dir = runs / config_name / f"seed{seed}"
    config = load_config(
        ROOT / "configs" / "avdigits" / f"{config_name}.yaml",
        [f"seed={seed}", "train.progress_bar=false", *overrides],
    )
    if (run_dir / "results.json").is_file() and (run_dir / "timing.json").is_file():
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
        if stored != config.to_dict():
            raise SystemExit(
                f"{run_dir} was trained with another config (the YAML or --set changed); delete "
                "it or choose another --runs folder"
            )
        print(f"reusing {run_dir}", flush=True)
        return run_dir
    start = time.perf_counter()
    train(config, run_dir)
    seconds = time.perf_counter() - start
    # The 1-minute load average at the end: the machine is shared, and the wall time with it.
    timing = {"wall_seconds": seconds, "load_average": os.getloadavg()[0]}
    (run_dir / "timing.json").write_text(json.dumps(timing) + "\n")
    print(f"{config_name} seed {seed}: {seconds:.0f} s", flush=True)
    return run_dir


def hard_combination(run_dir: Path) -> str:
    """The combination the HCR selected at the end of its warm-up, from the run's log."""
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    found = re.findall(r"hard combinations: (.*)", log)
    return found[-1].strip() if found else "-"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} +- {100 * statistics.stdev(values):.1f}"


def load_runs(runs: Path, seeds: list[int]) -> dict[str, dict[int, dict]]:
    """config -> seed -> {"result": results.json, "timing": timing.json, "dir": run dir}."""
    found: dict[str, dict[int, dict]] = {}
    for name in CONFIGS:
        for seed in seeds:
            run_dir = runs / name / f"seed{seed}"
            if (run_dir / "results.json").is_file() and (run_dir / "timing.json").is_file():
                found.setdefault(name, {})[seed] = {
                    "result": json.loads((run_dir / "results.json").read_text()),
                    "timing": json.loads((run_dir / "timing.json").read_text()),
                    "dir": run_dir,
                }
    return found


def variance_rows(found: dict[str, dict[int, dict]]) -> tuple[list[str], int, int]:
    """Per run: error / variance of each combination, the two orders, and whether the larger
    unimodal variance went with the larger unimodal error (ties in error are not counted)."""
    rows, counted, agreed = [], 0, 0
    for name, by_seed in found.items():
        if name == "moddrop":
            continue
        for seed, run in by_seed.items():
            result = run["result"]
            errors = {c: 1.0 - result["combinations"][c] for c in COMBINATIONS}
            variance = result.get("variance") or {}
            cells = [
                f"{100 * errors[c]:.1f} / {variance[c]:.3f}"
                if c in variance
                else f"{100 * errors[c]:.1f} / -"
                for c in COMBINATIONS
            ]
            by_error = " > ".join(sorted(COMBINATIONS, key=lambda c: -errors[c]))
            by_variance = order = "-"
            if variance:
                by_variance = " > ".join(sorted(COMBINATIONS, key=lambda c: -variance[c]))
                if abs(errors["audio"] - errors["image"]) < 1e-9:
                    order = "tie in error"
                else:
                    counted += 1
                    matches = (variance["audio"] > variance["image"]) == (
                        errors["audio"] > errors["image"]
                    )
                    agreed += matches
                    order = "yes" if matches else "no"
            rows.append(
                f"| {name} | {seed} | {' | '.join(cells)} | {by_variance} | {by_error} | {order} "
                f"| {hard_combination(run['dir'])} |"
            )
    return rows, counted, agreed


def paired_rows(found: dict[str, dict[int, dict]], reference: str = "moddrop") -> list[str]:
    """Per config: mean +- std over seeds of (config - reference) on the same seed."""
    rows = []
    for name, by_seed in found.items():
        seeds = sorted(set(by_seed) & set(found.get(reference, {})))
        if name == reference or not seeds:
            continue
        cells = []
        for key in (*COMBINATIONS, "mean"):

            def value(run: dict, key: str = key) -> float:
                result = run["result"]
                return result["summary"]["mean"] if key == "mean" else result["combinations"][key]

            diffs = [value(by_seed[s]) - value(found[reference][s]) for s in seeds]
            spread = f" +- {100 * statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
            cells.append(f"{100 * statistics.mean(diffs):+.1f}{spread}")
        rows.append(f"| {name} - {reference} | {len(seeds)} | " + " | ".join(cells) + " |")
    return rows


def report(runs: Path, seeds: list[int], command: str, preset: str) -> str:
    found = load_runs(runs, seeds)
    rows, times = [], []
    for name, by_seed in found.items():
        results = [run["result"] for run in by_seed.values()]
        cells = [mean_std([r["combinations"][c] for r in results]) for c in COMBINATIONS]
        cells.append(mean_std([r["summary"]["mean"] for r in results]))
        rows.append(f"| {name} | {len(results)} | " + " | ".join(cells) + " |")
        seconds = [run["timing"]["wall_seconds"] for run in by_seed.values()]
        loads = [run["timing"].get("load_average") for run in by_seed.values()]
        spread = f" +- {statistics.stdev(seconds):.0f}" if len(seconds) > 1 else ""
        load = ", ".join("?" if x is None else f"{x:.1f}" for x in loads)
        times.append(
            f"| {name} | {len(seconds)} | {statistics.mean(seconds):.0f}{spread} | "
            f"{min(seconds):.0f} | {max(seconds):.0f} | {load} |"
        )
    variance_table, counted, agreed = variance_rows(found)
    lines = [
        f"# AV-Digits results ({preset} preset)",
        "",
        "Produced by `benchmarks/avdigits_ladder.py`; rerun it to refresh this file:",
        "",
        f"    {command}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
        f"`OMP_NUM_THREADS=1`, torch {torch.__version__}. Test split: FSDD recordings 0-4 (300 "
        "clips) paired with images from the test pool; the same test set for every seed "
        "(`split_seed` 0). Checkpoint: best validation mean over the three combinations.",
        "",
        "## Ablation ladder: test accuracy (%), mean +- std over seeds",
        "",
        "| config | seeds | audio | image | audio+image | mean of 3 |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Paired by seed (same validation split and data order), difference to ModDrop in points:",
        "",
        "| comparison | seeds | audio | image | audio+image | mean of 3 |",
        "|---|---:|---:|---:|---:|---:|",
        *paired_rows(found),
        "",
        "## Embedding variance beside the error",
        "",
        "Each cell: test error (%) / mean embedding variance (mean of std^2 over the embedding) of",
        "the combination. The paper's audio-visual HCR rule (`unimodal-max`) treats the unimodal",
        "combination with the larger variance as the harder one; `unimodal order` says whether",
        "the modality with the larger test variance also had the larger test error. `HCR picked`",
        "is the combination the run's HCR selected at the end of its warm-up, from training",
        "statistics (variance for dmrnet, loss for moddrop-hcr).",
        "",
        "| config | seed | audio | image | audio+image | by variance | by error | unimodal order"
        " | HCR picked |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
        *variance_table,
        "",
        f"The larger unimodal variance went with the larger unimodal error in {agreed} of "
        f"{counted} runs with a variance head and unequal unimodal errors.",
        "",
        "## Wall time per run (s)",
        "",
        "Training (the configs' epochs) plus the test evaluation, one run at a time; the last",
        "column is the 1-minute load average of the 2-core machine when each run ended.",
        "",
        "| config | runs | mean +- std | min | max | load average |",
        "|---|---:|---:|---:|---:|---|",
        *times,
    ]
    return "\n".join(lines) + "\n"


def shown(path: Path) -> Path:
    """A path as the command line would give it: relative to the repository when inside it."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "avdigits-ladder")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "avdigits.md")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if not args.report_only:
        for name in args.configs:
            for seed in args.seeds:
                run_one(name, seed, args.runs, args.set)
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/avdigits_ladder.py"
    if args.seeds != [0, 1, 2]:
        command += " --seeds " + " ".join(map(str, args.seeds))
    if args.configs != list(CONFIGS):
        command += " --configs " + " ".join(args.configs)
    if args.runs != ROOT / "runs" / "avdigits-ladder":
        command += f" --runs {shown(args.runs)}"
    if args.out != ROOT / "docs" / "results" / "avdigits.md":
        command += f" --out {shown(args.out)}"
    for override in args.set:
        command += f" --set {override}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    notes = ""
    if args.out.is_file() and NOTES_MARKER in args.out.read_text():
        notes = "\n" + NOTES_MARKER + args.out.read_text().split(NOTES_MARKER, 1)[1]
    preset = "hard"
    for override in args.set:
        key, _, value = override.partition("=")
        if key.strip() == "data.options.preset":
            preset = value.strip()
    args.out.write_text(report(args.runs, args.seeds, command, preset) + notes)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
