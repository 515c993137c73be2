"""`dmrnet bench throughput`: the engine's own training step, timed in fp32 and bf16, and the
one-pass against per-combination evaluation, for models at their real input sizes on random
inputs (no dataset needed, so paper-size models can be timed where their data is not).

A throughput suite (dmrnet/bench/suites/throughput*.yaml) lists models:

    kind: throughput
    name: throughput
    steps: 20                   # timed training steps per precision (after as many untimed)
    eval_batches: 2             # test batches of the evaluation timing
    repeats: 3                  # timings of each kind; the median is reported
    precisions: [fp32, bf16]
    models:
      av:                       # a label
        config: cremad/dmrnet   # the model, optimizer and batch size come from the config
        overrides: []
        task: classification    # what the random data look like
        classes: 6
        inputs: {audio: [257, 188], visual: [1, 3, 224, 224]}

What is timed is `engine.LitMethod` under a Lightning Trainer, as `dmrnet train` fits it: the
modality-dropout mask, encode, decode, the method's loss, backward and the optimizer step, with
the config's optimizer and gradient clipping; bf16 is Lightning's "bf16-mixed" (autocast to
bfloat16, on CPU too). Each precision fits two epochs of `steps` batches on a fresh model: the
first is untimed (allocator, cuDNN autotuning) and is also the HCR's warm-up
(`model.hcr.warmup_epochs=1`), so the HCR selects at its end through its own rule and is on in
the second, timed epoch (`hcr_active` in the results says so). Evaluation: every combination in
one pass against re-encoding per combination, and one full-modality pass
(`speed.measure_evaluation`).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch.utils.data import Dataset

from dmrnet.bench.speed import measure_evaluation
from dmrnet.checks import format_errors
from dmrnet.config import Config, load_config, read_yaml, resolve_config
from dmrnet.data.base import DataSpec, DataSplits
from dmrnet.data.loaders import make_loader
from dmrnet.engine import LitMethod
from dmrnet.errors import ConfigError, DmrnetError
from dmrnet.modalities import ModalitySet
from dmrnet.runs import build_model

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThroughputModel(_Strict):
    config: str
    overrides: list[str] = Field(default_factory=list)
    task: Literal["classification", "pad", "segmentation"] = "classification"
    classes: int = Field(ge=2)
    inputs: dict[str, list[int]] = Field(min_length=1, description="modality -> input shape")
    extra: dict[str, Any] = Field(default_factory=dict, description="DataSpec.extra, e.g. holes")


class ThroughputSuite(_Strict):
    kind: Literal["throughput"]
    name: str
    description: str = ""
    base: str = "."
    steps: int = Field(20, ge=1)
    eval_batches: int = Field(2, ge=1)
    repeats: int = Field(3, ge=1)
    precisions: list[Literal["fp32", "bf16"]] = Field(default=["fp32", "bf16"], min_length=1)
    models: dict[str, ThroughputModel] = Field(min_length=1)


class RandomInputs(Dataset):
    """`size` random samples in the layout of a dataset with `spec`: every modality present,
    inputs from a normal distribution, uniform labels (per pixel for segmentation)."""

    def __init__(self, spec: DataSpec, size: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = {
            name: torch.randn(size, *shape, generator=generator)
            for name, shape in spec.input_shapes.items()
        }
        label_shape = (
            () if spec.task != "segmentation" else spec.input_shapes[spec.modalities.names[0]][-2:]
        )
        self.targets = torch.randint(0, spec.num_classes, (size, *label_shape), generator=generator)
        self.present = torch.ones(len(spec.modalities), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "inputs": {name: values[index] for name, values in self.inputs.items()},
            "present": self.present,
            "target": self.targets[index],
        }


def load_throughput_suite(
    path: Path, overrides: list[str] | None = None, models: list[str] | None = None
) -> tuple[ThroughputSuite, dict[str, tuple[Config, DataSpec]]]:
    """The suite, and each selected model's config (with the HCR's warm-up set to the one
    untimed epoch) and random-data description; every config is parsed before anything runs."""
    try:
        suite = ThroughputSuite.model_validate(read_yaml(path))
    except ValidationError as error:
        raise ConfigError(format_errors(error, str(path))) from None
    unknown = [m for m in models or [] if m not in suite.models]
    if unknown:
        raise ConfigError(
            f"{path}: no model {unknown[0]!r} in the suite; it has {', '.join(suite.models)}"
        )
    base = (path.parent / suite.base).resolve()
    built = {}
    for label, entry in suite.models.items():
        if models and label not in models:
            continue
        where = f"{path}: models.{label}"
        try:
            config = load_config(
                resolve_config(entry.config, base=base),
                [*entry.overrides, *(overrides or []), "model.hcr.warmup_epochs=1"],
            )
        except DmrnetError as error:
            raise ConfigError(f"{where}: {error}") from None
        spec = DataSpec(
            name=f"random-{label}",
            modalities=ModalitySet(tuple(entry.inputs)),
            input_shapes={name: tuple(shape) for name, shape in entry.inputs.items()},
            task=entry.task,
            num_classes=entry.classes,
            ignore_index=255 if entry.task == "segmentation" else None,
            extra=entry.extra,
        )
        built[label] = (config, spec)
    return suite, built


class StepTimer(pl.Callback):
    """Seconds of each training step of epoch `timed_epoch` (device synchronized around it),
    and whether the HCR's loss was on in each."""

    def __init__(self, device: torch.device, timed_epoch: int) -> None:
        self.device = device
        self.timed_epoch = timed_epoch
        self.steps: list[float] = []
        self.hcr_active: list[bool] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.timed_epoch and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.timed_epoch:
            _synchronize(self.device)
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        if trainer.current_epoch == self.timed_epoch:
            _synchronize(self.device)
            self.steps.append(time.perf_counter() - self._start)
            self.hcr_active.append(bool(module.method.hcr.active))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    config: Config, spec: DataSpec, precision: str, device: torch.device, steps: int
) -> dict[str, Any]:
    """Samples/s of `steps` training steps of the engine (after an untimed warm-up epoch)."""
    torch.manual_seed(config.seed)
    method = build_model(config, spec)
    batch = config.train.batch_size
    loader = make_loader(
        RandomInputs(spec, batch * steps, config.seed), batch, True, 0, config.seed
    )
    timer = StepTimer(device, timed_epoch=1)
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=PRECISIONS[precision],  # type: ignore[arg-type]
        max_epochs=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=config.train.gradient_clip,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LitMethod(method, config, epochs=2), loader)
    seconds = sum(timer.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "samples_per_s": batch * len(timer.steps) / seconds,
        "step_s": seconds / len(timer.steps),
        "steps": len(timer.steps),
        "hcr_active": all(timer.hcr_active),
        "peak_memory_gib": peak,
        "method": method,
    }


def measure_model(
    config: Config,
    spec: DataSpec,
    device: torch.device,
    precisions: list[str],
    steps: int,
    eval_batches: int,
    repeats: int,
) -> dict[str, Any]:
    """Training (each precision `repeats` times, alternating, median) and evaluation."""
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in precisions}
    for _ in range(repeats):
        for precision in precisions:
            runs[precision].append(time_training(config, spec, precision, device, steps))
    training = {}
    for precision, found in runs.items():
        rates = [r["samples_per_s"] for r in found]
        peaks = [r["peak_memory_gib"] for r in found if r["peak_memory_gib"] is not None]
        training[precision] = {
            "samples_per_s": statistics.median(rates),
            "step_s": config.train.batch_size / statistics.median(rates),
            "steps": found[0]["steps"],
            "hcr_active": all(r["hcr_active"] for r in found),
            "peak_memory_gib": max(peaks) if peaks else None,
        }
    if {"fp32", "bf16"} <= set(training):
        training["bf16_over_fp32"] = (
            training["bf16"]["samples_per_s"] / training["fp32"]["samples_per_s"]
        )
    method = runs[precisions[0]][-1]["method"]  # a trained model, for the evaluation timing
    test = RandomInputs(spec, config.eval.batch_size * eval_batches, config.seed + 1)
    data = DataSplits(spec=spec, train=test, val=test, test=test)
    evaluation = measure_evaluation(method, config, data, device, repeats)
    return {
        "method": config.model.method,
        "parameters": sum(p.numel() for p in method.parameters()),
        "batch_size": config.train.batch_size,
        "inputs": {name: list(shape) for name, shape in spec.input_shapes.items()},
        "hcr_rule": config.model.hcr.rule,
        "training": training,
        "evaluation": evaluation,
    }


def run_throughput(
    path: Path,
    out: Path,
    device: str = "cpu",
    overrides: list[str] | None = None,
    models: list[str] | None = None,
    command: str = "",
    console: Any = None,
) -> dict[str, Any]:
    """Measure every model of a throughput suite; write OUT/results.json and OUT/report.md."""
    from rich.console import Console

    from dmrnet.bench.runner import _quiet_lightning, machine_info

    console = console or Console()
    suite, built = load_throughput_suite(path, overrides, models)
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _quiet_lightning()
    measured = {}
    for label, (config, spec) in built.items():
        console.print(f"timing {label} ({config.model.method}) on {torch_device}")
        measured[label] = measure_model(
            config,
            spec,
            torch_device,
            list(suite.precisions),
            suite.steps,
            suite.eval_batches,
            suite.repeats,
        )
    results = {
        "suite": suite.name,
        "kind": "throughput",
        "description": suite.description,
        "command": command,
        "machine": machine_info(torch_device),
        "overrides": list(overrides or []),
        "steps": suite.steps,
        "repeats": suite.repeats,
        "models": measured,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(throughput_markdown(results))
    console.print(
        f"written: {out / 'report.md'}, {out / 'results.json'}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    return results


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def throughput_markdown(results: dict[str, Any]) -> str:
    precisions = [
        p for p in PRECISIONS if any(p in m["training"] for m in results["models"].values())
    ]
    lines = [
        f"# dmrnet throughput: suite `{results['suite']}`",
        "",
        f"Generated by `{results['command']}`. Machine: {results['machine']['summary']}.",
        "",
    ]
    if results["description"]:
        lines += [results["description"].strip(), ""]
    lines += [
        f"Training: samples/s of the engine's training step (LitMethod under a Lightning "
        f"Trainer), median of {results['repeats']} fits of {results['steps']} timed steps after "
        "an untimed warm-up epoch; `HCR on`: the hard-combination loss was active in the timed "
        "steps. Evaluation: every combination of the random test batches in one pass against "
        "re-encoding per combination, and one full-modality pass (ms, median).",
        "",
        "| model | method | parameters | batch | "
        + " | ".join(f"{p} samples/s" for p in precisions)
        + " | bf16 / fp32 | peak GiB | HCR on | one pass (ms) | per combination (ms) "
        "| loop / one pass | one pass / full pass | same results |",
        "|---|---|---:|---:|"
        + "---:|" * len(precisions)
        + "---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for label, m in results["models"].items():
        training, evaluation = m["training"], m["evaluation"]
        rates = [_num(training[p]["samples_per_s"]) if p in training else "–" for p in precisions]
        peaks = [training[p]["peak_memory_gib"] for p in precisions if p in training]
        peak = " / ".join(_num(p, 2) for p in peaks) if any(p is not None for p in peaks) else "–"
        on = all(training[p]["hcr_active"] for p in precisions if p in training)
        ratio = training.get("bf16_over_fp32")
        same = evaluation["max_metric_difference"]
        lines.append(
            f"| {label} | {m['method']} | {m['parameters']:,} | {m['batch_size']} | "
            + " | ".join(rates)
            + f" | {'–' if ratio is None else f'{ratio:.2f}x'} | {peak} | "
            f"{'yes' if on else 'no'} | {_num(1000 * evaluation['one_pass_s'])} | "
            f"{_num(1000 * evaluation['loop_s'])} | {_num(evaluation['speedup'])}x | "
            f"{_num(evaluation['one_pass_over_full'], 2)}x | "
            f"{'yes' if same < 1e-6 else f'no ({same:.2g})'} |"
        )
    return "\n".join(lines) + "\n"
