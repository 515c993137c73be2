"""Run a suite: train every job (skipping finished ones, resuming interrupted ones), measure speed,
aggregate and write the report.

    OUT/
      runs/<dataset>/<method>/seed<k>/   a normal run directory (+ bench.json: its wall time)
        evaluations/<name>/              an extra evaluation of it (config.yaml + results)
      speed/<dataset>/<method>.json       speed and memory of the first seed's model
      results.json                        everything the report shows, machine-readable
      report.md                           tables and figures (figures/ beside it)

A killed bench continues where it stopped when run again with the same command: finished runs
(results.json present) are skipped, a run with a checkpoint resumes from it. A run directory
whose stored config differs from the suite's (the suite or the overrides changed) is an error,
so stale results are never mixed into a report; extra evaluations are checked the same way.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from dmrnet.bench.report import aggregate_method, compare, leaders, mean_std, write_outputs
from dmrnet.bench.speed import measure_speed
from dmrnet.bench.suite import Job, LoadedSuite, SpeedSettings
from dmrnet.config import Config, load_config, save_config
from dmrnet.errors import ConfigError
from dmrnet.runs import (
    build_data_for,
    build_model,
    evaluate_model,
    load_checkpoint,
    train,
)
from dmrnet.tasks import build_task

log = logging.getLogger("dmrnet")


# -- job state ----------------------------------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}{key}."))
        return items
    return {prefix.rstrip("."): value}


def check_stored_config(directory: Path, config: Config) -> None:
    """The one reuse rule: a directory written with another config than the suite's (the suite
    or the overrides changed) is an error, so a stale result never reaches a report."""
    stored = directory / "config.yaml"
    if not stored.is_file():
        return
    old, new = _flatten(load_config(stored).to_dict()), _flatten(config.to_dict())
    if old != new:
        key = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise ConfigError(
            f"{directory} holds results of a different config ({key}: {old.get(key)!r} there, "
            f"{new.get(key)!r} now); use another --out or delete that directory"
        )


def job_state(job: Job, out: Path) -> str:
    """'done' (results.json written), 'resume' (a checkpoint exists) or 'new'; checks the stored
    configs of the run and of its extra evaluations."""
    run_dir = job.run_dir(out)
    check_stored_config(run_dir, job.config)
    for name, config in job.evaluations.items():
        check_stored_config(job.evaluation_dir(out, name), config)
    if (run_dir / "results.json").is_file():
        return "done"
    checkpoints = [run_dir / "checkpoints", *(run_dir / "stages").glob("*/checkpoints")]
    if any((c / "last.ckpt").is_file() for c in checkpoints):
        return "resume"
    return "new"


def evaluate_again(job: Job, out: Path, name: str, data_root: str | None) -> Path:
    """The trained run's best checkpoint evaluated on the test split under the evaluation's
    config (other decision options, e.g. PAD's equal-error threshold): the model is built for
    that config's data, so its task decides as the config says, and given the trained weights."""
    config = job.evaluations[name]
    directory = job.evaluation_dir(out, name)
    trained = load_checkpoint(job.run_dir(out))
    data = build_data_for(config, data_root)
    method = build_model(config, data.spec)
    method.load_state_dict(trained.method.state_dict())
    method.eval()
    directory.mkdir(parents=True, exist_ok=True)
    save_config(config, directory / "config.yaml")  # first: results never exist unchecked
    evaluate_model(method, config, data, "test", fit_ensemble=True).write(directory)
    return directory


# -- machine ------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    info = {
        "cpu": cpu,
        "cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    gpu = ""
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        gpu = f", GPU {info['gpu']}"
    info["summary"] = (
        f"{cpu}, {usable} cores usable, torch {torch.__version__} with "
        f"{info['torch_threads']} thread(s){gpu}, {info['platform']}"
    )
    return info


# -- running ------------------------------------------------------------------------------------
def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def run_jobs(
    loaded: LoadedSuite,
    out: Path,
    data_root: str | None,
    console: Any,
    device: torch.device,
) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    _quiet_lightning()
    states = {job.key: job_state(job, out) for job in loaded.jobs}  # checks every stored config
    speed_jobs = []
    if loaded.suite.speed.enabled:
        for dataset in loaded.datasets():
            for method in loaded.methods(dataset):
                job = loaded.jobs_of(dataset, method)[0]
                if not _speed_path(out, job).is_file():
                    speed_jobs.append(job)
    done = sum(state == "done" for state in states.values())
    console.print(
        f"[bold]{loaded.suite.name}[/bold]: {len(loaded.jobs)} runs ({done} already finished), "
        f"{len(speed_jobs)} speed measurements; results in {out}"
    )
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        runs = progress.add_task("runs", total=len(loaded.jobs), completed=done)
        for job in loaded.jobs:
            state = states[job.key]
            if state == "done":
                continue
            verb = "resuming" if state == "resume" else "training"
            progress.update(runs, description=f"{verb} {job.key}")
            seconds = _train_job(job, out, data_root, resume=state == "resume")
            result = json.loads((job.run_dir(out) / "results.json").read_text())
            progress.console.print(
                f"  done {job.key}: {seconds:.0f} s, mean over combinations "
                f"{100 * result['summary']['mean']:.2f}%"
            )
            progress.advance(runs)
        progress.update(runs, description="runs")
        pending = [
            (job, name)
            for job in loaded.jobs
            for name in job.evaluations
            if not (job.evaluation_dir(out, name) / "results.json").is_file()
        ]
        if pending:
            evaluations = progress.add_task("evaluations", total=len(pending))
            for job, name in pending:
                progress.update(evaluations, description=f"evaluating {job.key} ({name})")
                evaluate_again(job, out, name, data_root)
                progress.advance(evaluations)
        if speed_jobs:
            speed = progress.add_task("speed", total=len(speed_jobs))
            for job in speed_jobs:
                progress.update(speed, description=f"speed {job.dataset}/{job.method}")
                _measure_speed(job, out, data_root, device, loaded.suite.speed)
                progress.advance(speed)


def _train_job(job: Job, out: Path, data_root: str | None, resume: bool) -> float:
    run_dir = job.run_dir(out)
    start = time.perf_counter()
    train(job.config, run_dir, data_root=data_root, resume=resume)
    seconds = time.perf_counter() - start
    record = {"train_wall_s": seconds, "resumed": resume}
    (run_dir / "bench.json").write_text(json.dumps(record, indent=2) + "\n")
    return seconds


def _speed_path(out: Path, job: Job) -> Path:
    return out / "speed" / job.dataset / f"{job.method}.json"


def _measure_speed(
    job: Job, out: Path, data_root: str | None, device: torch.device, settings: SpeedSettings
) -> None:
    """Speed and memory of the job's trained model (the first seed of each method)."""
    phases = measure_speed(
        job.run_dir(out),
        settings.model_dump(),
        device=str(device),
        data_root=data_root,
        isolate=settings.isolate,
    )
    record = {"seed": job.seed, "device": str(device), "threads": torch.get_num_threads(), **phases}
    path = _speed_path(out, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


# -- results ------------------------------------------------------------------------------------
def collect(
    loaded: LoadedSuite, out: Path, data_root: str | None, command: str, device: torch.device
) -> dict[str, Any]:
    """Everything the report shows, from the files of the finished runs."""
    reference = loaded.suite.reference
    datasets: dict[str, Any] = {}
    notes = []
    for dataset in loaded.datasets():
        methods: dict[str, Any] = {}
        first: dict[str, Any] | None = None
        for method in loaded.methods(dataset):
            jobs = loaded.jobs_of(dataset, method)
            per_seed = {}
            again: dict[str, dict[int, Any]] = {}
            walls, resumed = [], []
            for job in jobs:
                run_dir = job.run_dir(out)
                path = run_dir / "results.json"
                if not path.is_file():
                    continue
                per_seed[job.seed] = json.loads(path.read_text())
                for name in job.evaluations:
                    found = job.evaluation_dir(out, name) / "results.json"
                    if found.is_file():
                        again.setdefault(name, {})[job.seed] = json.loads(found.read_text())
                record = run_dir / "bench.json"
                if record.is_file():
                    timing = json.loads(record.read_text())
                    (resumed if timing["resumed"] else walls).append(timing["train_wall_s"])
            if not per_seed:
                continue
            first = first or next(iter(per_seed.values()))
            entry = aggregate_method(per_seed)
            entry["method"] = jobs[0].config.model.method
            entry["config"] = _display_path(jobs[0].config_path)
            entry["train_wall_s"] = mean_std(walls)
            entry["evaluations"] = {name: aggregate_method(found) for name, found in again.items()}
            if resumed:
                notes.append(
                    f"{dataset}/{method}: {len(resumed)} run(s) were resumed after an "
                    "interruption; their wall time is left out of the training time column."
                )
            missing = [j.seed for j in jobs if j.seed not in per_seed]
            if missing:
                notes.append(f"{dataset}/{method}: seeds {missing} have no results yet.")
            speed = _speed_path(out, jobs[0])
            if speed.is_file():
                entry["speed"] = json.loads(speed.read_text())
            methods[method] = entry
        if first is None:
            continue
        higher = _higher_is_better(next(j for j in loaded.jobs if j.dataset == dataset), data_root)
        if reference in methods:
            for label, entry in methods.items():
                if label == reference:
                    continue
                entry["comparison"] = compare(entry, methods[reference], higher)
                for name, evaluation in entry["evaluations"].items():
                    theirs = methods[reference]["evaluations"].get(name)
                    if theirs is not None:
                        evaluation["comparison"] = compare(evaluation, theirs, higher)
        datasets[dataset] = {
            "metric": first["metric"],
            "split": first["split"],
            "higher_is_better": higher,
            "modalities": first["modalities"],
            "combinations": list(first["combinations"]),
            "seeds": loaded.seeds(),
            "methods": methods,
            "leaders": leaders(methods, higher),
            "evaluations": list(
                dict.fromkeys(e for m in methods.values() for e in m["evaluations"])
            ),
            "analyses": list(loaded.suite.datasets[dataset].analyses),
            "ladder": list(loaded.suite.datasets[dataset].ladder),
        }
    return {
        "suite": loaded.suite.name,
        "description": loaded.suite.description,
        "suite_file": _display_path(loaded.path),
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(device),
        "reference": reference,
        "overrides": [*loaded.suite.overrides, *loaded.overrides],
        "notes": notes,
        "datasets": datasets,
    }


def _higher_is_better(job: Job, data_root: str | None) -> bool:
    spec = build_data_for(job.config, data_root).spec
    return build_task(spec).headline.higher_is_better


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def run_bench(
    loaded: LoadedSuite,
    out: str | Path,
    data_root: str | None = None,
    device: str = "cpu",
    report: str | Path | None = None,
    figures: str | Path | None = None,
    command: str | None = None,
    console: Any = None,
    report_only: bool = False,
) -> dict[str, Any]:
    """Run (or continue) a suite and write OUT/results.json, OUT/report.md and the figures;
    `report` (and `figures`) write the Markdown report elsewhere too (e.g. BENCHMARKS.md).
    `report_only`: train, evaluate and time nothing; report the runs that are finished (the
    report's notes list the seeds that have no results)."""
    from rich.console import Console

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console()
    torch_device = torch.device(device)
    command = command or "dmrnet " + " ".join(sys.argv[1:])
    if not report_only:
        run_jobs(loaded, out, data_root, console, torch_device)
    results = collect(loaded, out, data_root, command, torch_device)
    written = write_outputs(results, out / "report.md", out / "figures", out / "results.json")
    if report is not None:
        report = Path(report)
        figures = Path(figures) if figures is not None else report.parent / "figures"
        written += write_outputs(results, report, figures)
    files = ", ".join(str(p) for p in written if p.suffix != ".png")
    console.print(f"written: {files}", soft_wrap=True, markup=False, highlight=False)  # copyable
    return results
