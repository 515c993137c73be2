"""Dense DMRNet vs ModDrop on digits-rgbd, over seeds, written to docs/results/digits-rgbd.md.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/digits_rgbd.py

Trains (in src/dmrnet/configs/)
digits_rgbd/{moddrop,dmrnet}.yaml with seeds 0, 1, 2 (one run at a time, one
thread, seed by seed so that finished seeds are paired), each into
runs/digits-rgbd/<config>/seed<seed>/, then reports the test mIoU of rgb, depth and rgb+depth
(mean +- std over seeds), the paired DMRNet - ModDrop difference, pixel accuracy, the embedding
variance per combination, and the wall and CPU time of each run. The scenes are the same for every
seed (composition seed 0); the seed changes initialization, dropout draws and batch order.
A run directory that already holds results.json and timing.json is reused (delete it to retrain);
`--report-only` rewrites the report from existing runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dmrnet.config import load_config
from dmrnet.runs import train

CONFIGS = ("moddrop", "dmrnet")
COMBINATIONS = ("rgb", "depth", "rgb+depth")
ROOT = Path(__file__).resolve().parents[1]
# Everything below this line in the report is hand-written and kept when the report is rewritten.
NOTES_MARKER = "<!-- notes: kept when benchmarks/digits_rgbd.py rewrites this file -->"


def run_one(config_name: str, seed: int, runs: Path, overrides: list[str]) -> Path:
    run_dir = runs / config_name / f"seed{seed}"
    if (run_dir / "results.json").is_file() and (run_dir / "timing.json").is_file():
        print(f"reusing {run_dir}", flush=True)
        return run_dir
    config = load_config(
        ROOT / "configs" / "digits_rgbd" / f"{config_name}.yaml",
        [f"seed={seed}", "train.progress_bar=false", *overrides],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    train(config, run_dir)
    timing = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    (run_dir / "timing.json").write_text(json.dumps(timing) + "\n")
    print(f"{config_name} seed {seed}: {timing['wall_seconds']:.0f} s wall", flush=True)
    return run_dir


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return (
        f"{scale * statistics.mean(values):.{digits}f} +- "
        f"{scale * statistics.stdev(values):.{digits}f}"
    )


def load(runs: Path, name: str, seeds: list[int]) -> dict[int, tuple[dict, dict]]:
    found = {}
    for seed in seeds:
        run_dir = runs / name / f"seed{seed}"
        if (run_dir / "results.json").is_file() and (run_dir / "timing.json").is_file():
            found[seed] = (
                json.loads((run_dir / "results.json").read_text()),
                json.loads((run_dir / "timing.json").read_text()),
            )
    return found


def report(runs: Path, seeds: list[int], command: str) -> str:
    results = {name: load(runs, name, seeds) for name in CONFIGS}
    miou_rows, accuracy_rows, variance_rows, time_rows = [], [], [], []
    for name in CONFIGS:
        found = list(results[name].values())
        if not found:
            continue
        cells = [mean_std([r["combinations"][c] for r, _ in found]) for c in COMBINATIONS]
        cells.append(mean_std([r["summary"]["mean"] for r, _ in found]))
        gap = [
            r["combinations"]["rgb+depth"]
            - max(r["combinations"]["rgb"], r["combinations"]["depth"])
            for r, _ in found
        ]
        miou_rows.append(
            f"| {name} | {len(found)} | " + " | ".join(cells) + f" | {mean_std(gap)} |"
        )
        accuracy = [r["metrics"]["pixel_accuracy"]["combinations"] for r, _ in found]
        accuracy_rows.append(
            f"| {name} | "
            + " | ".join(mean_std([a[c] for a in accuracy]) for c in COMBINATIONS)
            + " |"
        )
        variances = [r.get("variance") or {} for r, _ in found]
        if all(variances):
            variance_rows.append(
                f"| {name} | "
                + " | ".join(mean_std([v[c] for v in variances], 1.0, 3) for c in COMBINATIONS)
                + " |"
            )
        wall = [t["wall_seconds"] for _, t in found]
        cpu = [t["cpu_seconds"] for _, t in found]
        time_rows.append(
            f"| {name} | {len(found)} | {mean_std(wall, 1.0, 0)} | {mean_std(cpu, 1.0, 0)} | "
            f"{max(wall):.0f} |"
        )
    paired = sorted(set(results["dmrnet"]) & set(results["moddrop"]))
    difference_rows = []
    for combination in (*COMBINATIONS, "mean"):

        def value(result: dict, combination: str = combination) -> float:
            if combination == "mean":
                return result["summary"]["mean"]
            return result["combinations"][combination]

        deltas = [value(results["dmrnet"][s][0]) - value(results["moddrop"][s][0]) for s in paired]
        wins = sum(d > 0 for d in deltas)
        difference_rows.append(f"| {combination} | {mean_std(deltas)} | {wins} of {len(deltas)} |")

    lines = [
        "# digits-rgbd results: dense DMRNet vs ModDrop",
        "",
        "Produced by `benchmarks/digits_rgbd.py`; rerun it to refresh this file:",
        "",
        f"    {command}",
        "",
        "digits-rgbd is *composed* from MNIST test digits (docs/datasets.md): 48x48 scenes, 1800 "
        "training, 200 validation and 500 test scenes, the same for every seed (composition seed "
        "0), digit pools disjoint across splits. Configs: "
        "src/dmrnet/configs/digits_rgbd/moddrop.yaml and "
        "dmrnet.yaml (ResNet-10 branches of width 16, 20 epochs, AdamW). Checkpoint: best "
        "validation mean mIoU over the three combinations. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
        f"`OMP_NUM_THREADS=1`, torch {torch.__version__}.",
        "",
        "## Test mIoU (%), mean +- std over seeds",
        "",
        "`gap`: rgb+depth minus the better single modality (per run, then averaged).",
        "",
        "| method | seeds | rgb | depth | rgb+depth | mean of 3 | gap |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *miou_rows,
        "",
        "## DMRNet minus ModDrop, paired by seed (mIoU points)",
        "",
        "| combination | difference | DMRNet better |",
        "|---|---:|---:|",
        *difference_rows,
        "",
        "## Test pixel accuracy (%)",
        "",
        "| method | rgb | depth | rgb+depth |",
        "|---|---:|---:|---:|",
        *accuracy_rows,
        "",
        "## Mean embedding variance per combination (DMRNet)",
        "",
        "| method | rgb | depth | rgb+depth |",
        "|---|---:|---:|---:|",
        *variance_rows,
        "",
        "## Time per run (s): training, test evaluation and the prediction grid",
        "",
        "Wall time depends on what else runs on the shared cores; CPU time is this process's.",
        "",
        "| method | runs | wall | CPU | slowest wall |",
        "|---|---:|---:|---:|---:|",
        *time_rows,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "digits-rgbd")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "digits-rgbd.md")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if not args.report_only:
        for seed in args.seeds:
            for name in args.configs:
                run_one(name, seed, args.runs, args.set)
    command = "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/digits_rgbd.py"
    if args.seeds != [0, 1, 2]:
        command += " --seeds " + " ".join(map(str, args.seeds))
    for override in args.set:
        command += f" --set {override}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    notes = ""
    if args.out.is_file() and NOTES_MARKER in args.out.read_text():
        notes = "\n" + NOTES_MARKER + args.out.read_text().split(NOTES_MARKER, 1)[1]
    args.out.write_text(report(args.runs, args.seeds, command) + notes)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
