"""Run directories: train a config into one, load a model back from one, evaluate it.

RUN_DIR/
  config.yaml            the resolved config
  checkpoints/best.ckpt  best validation mean over combinations
  checkpoints/last.ckpt  end of the latest epoch (what --resume continues from)
  logs/metrics.csv       per-step and per-epoch logs (losses, val summaries, HCR statistics)
  train.log              the run's log lines
  results.{json,csv,md,png}  every-combination evaluation on the test split
  MODEL_CARD.md          dataset, inputs, method, per-combination summary, intended use, limits
  predictions.png        dense tasks (segmentation): a few test samples, predicted under each
                         combination
  stages/<name>/         earlier stages of a multi-stage method (e.g. MMANet's teacher): their
                         own checkpoints/ and logs/, and STAGE_DONE once finished
"""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dmrnet.config import Config, load_config, parse_config, save_config
from dmrnet.data import DataSplits, build_data
from dmrnet.data.base import CHECKPOINT_FORMAT, DataSpec, spec_from_dict
from dmrnet.errors import CheckpointError, ConfigError, DmrnetError
from dmrnet.evaluate import EvaluationReport, build_report
from dmrnet.methods import Method, build_method
from dmrnet.methods.stages import StagedMethod, TrainingStage
from dmrnet.modalities import Combination
from dmrnet.model_card import write_model_card
from dmrnet.tasks import build_task

log = logging.getLogger("dmrnet")

STAGE_DONE = "STAGE_DONE"  # marks a finished earlier stage of a multi-stage method


def build_data_for(config: Config, data_root: str | Path | None = None) -> DataSplits:
    return build_data(
        config.data.name,
        config.data.options,
        root=data_root if data_root is not None else config.data.root,
        val_fraction=config.data.val_fraction,
        seed=config.seed,
    )


def build_model(config: Config, spec: DataSpec) -> Method:
    return build_method(config.model, spec, build_task(spec))


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _add_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("dmrnet").addHandler(handler)
    logging.getLogger("dmrnet").setLevel(logging.INFO)
    return handler


def training_stages(method: Method, config: Config) -> list[TrainingStage]:
    """The stages `train` fits in turn: the method's own (see methods/stages.py), or one stage of
    `train.epochs` epochs selected on the validation mean over combinations."""
    if isinstance(method, StagedMethod):
        stages = method.training_stages(config.train.epochs)
        names = [stage.name for stage in stages]
        if not stages or len(set(names)) != len(names):
            raise ConfigError(f"model.method {config.model.method!r}: bad training stages {names}")
        return stages
    return [TrainingStage("train", config.train.epochs)]


def stage_directories(run_dir: Path, stages: list[TrainingStage]) -> list[Path]:
    """Where each stage writes checkpoints and logs: the last stage (the model that is evaluated
    and deployed) writes RUN_DIR itself, earlier ones RUN_DIR/stages/<name>/."""
    return [run_dir / "stages" / s.name for s in stages[:-1]] + [run_dir]


def _method_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    prefix = "method."
    return {
        k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
    }


def train(
    config: Config,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    resume: bool = False,
) -> EvaluationReport | None:
    """Train `config` into `run_dir`, then evaluate every combination on the test split.

    Everything that can fail on user input (config, data, model options) is checked before the
    run directory is created, so a bad run leaves nothing behind. With `resume`, training
    continues from the last checkpoint of the stage that was interrupted (for single-stage
    methods `run_dir/checkpoints/last.ckpt`). Returns the test report (rank 0 only).

    A method with several training stages (methods/stages.py) has each fitted in turn, with its
    own epochs, checkpoints and selection metric; a finished stage is marked with a file
    `STAGE_DONE` and its best weights are loaded before the next stage begins.
    """
    import lightning.pytorch as pl

    from dmrnet.engine import LitMethod, build_trainer, make_loader  # Lightning: not at load

    run_dir = Path(run_dir)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = build_data_for(config, data_root)
    method = build_model(config, data.spec)
    stages = training_stages(method, config)
    directories = stage_directories(run_dir, stages)
    lasts = [d / "checkpoints" / "last.ckpt" for d in directories]
    if resume and not any(last.is_file() for last in lasts):
        raise CheckpointError(f"{run_dir}: nothing to resume, {lasts[0]} does not exist")
    if not resume and _is_rank_zero() and _has_checkpoints(directories):
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume or choose another --run-dir"
        )
    train_loader = make_loader(
        data.train, config.train.batch_size, True, config.data.num_workers, config.seed
    )
    val_loader = make_loader(data.val, config.eval.batch_size, False, config.data.num_workers)
    maximize = method.task.headline.higher_is_better

    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _add_file_log(run_dir)
    metrics_file = run_dir / "logs" / "metrics.csv"
    earlier_metrics = metrics_file.with_name("metrics.before-resume.csv")
    if resume and metrics_file.is_file() and _is_rank_zero():
        # Lightning's CSV logger starts its file afresh; keep the history and merge it back.
        metrics_file.replace(earlier_metrics)
    try:
        if _is_rank_zero() and not resume:
            save_config(config, run_dir / "config.yaml")
        stage_plan = zip(stages, directories, lasts, strict=True)
        for index, (stage, directory, last) in enumerate(stage_plan):
            final = index == len(stages) - 1
            done = directory / STAGE_DONE
            if len(stages) > 1:
                if not final and done.is_file():
                    _load_weights(method, resolve_checkpoint(directory))
                    continue
                log.info("training stage %r (%d epochs)", stage.name, stage.epochs)
                method.begin_stage(stage.name)  # type: ignore[attr-defined]
            trainer = build_trainer(
                config,
                directory,
                len(train_loader),
                maximize=maximize,
                epochs=stage.epochs,
                monitor=stage.monitor,
            )
            continues = resume and last.is_file()
            trainer.fit(
                LitMethod(method, config, epochs=stage.epochs),
                train_loader,
                val_loader,
                ckpt_path=last if continues else None,
                weights_only=True if continues else None,
            )
            if not final:
                # The next stage starts from this stage's best weights (e.g. the best teacher).
                _load_weights(method, resolve_checkpoint(directory))
                if _is_rank_zero():
                    done.write_text(f"stage {stage.name!r} finished\n")
    except BaseException:
        # A run that never wrote a checkpoint is not worth keeping; one that did can resume.
        if created and _is_rank_zero() and not _has_checkpoints(directories):
            logging.getLogger("dmrnet").removeHandler(handler)
            handler.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        logging.getLogger("dmrnet").removeHandler(handler)
        handler.close()
        if earlier_metrics.is_file():
            _prepend_rows(earlier_metrics, metrics_file)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # The test evaluation below runs on rank 0 alone: nothing may wait for the other ranks.
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return None
    loaded = load_checkpoint(resolve_checkpoint(run_dir))
    report = evaluate_model(loaded.method, loaded.config, data, "test")
    report.write(run_dir)
    write_pictures(loaded.method, data.test, report, run_dir)
    write_model_card(run_dir, loaded.config, loaded.spec, report)
    return report


def _has_checkpoints(directories: list[Path]) -> bool:
    return any((d / "checkpoints").exists() for d in directories)


def _load_weights(method: Method, path: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    method.load_state_dict(_method_state(checkpoint))


def _prepend_rows(earlier: Path, current: Path) -> None:
    """metrics.csv := earlier rows + current rows, with the union of their columns."""
    tables = []
    for path in (earlier, current):
        if path.is_file():
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                tables.append((list(reader.fieldnames or []), list(reader)))
    columns = sorted({name for names, _ in tables for name in names})
    with current.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for _, rows in tables:
            writer.writerows(rows)
    earlier.unlink()


@dataclass
class LoadedRun:
    method: Method
    config: Config
    spec: DataSpec
    checkpoint: Path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            candidate = path / "checkpoints" / name
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    return path


def load_checkpoint(path: str | Path) -> LoadedRun:
    """Rebuild a trained method from a checkpoint, loading it with `weights_only=True` (a
    checkpoint can never execute code). Foreign or corrupt files raise CheckpointError."""
    path = resolve_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise CheckpointError(
            f"{path}: not a loadable dmrnet checkpoint ({first_line}); dmrnet loads checkpoints "
            "with weights_only=True and never unpickles arbitrary objects"
        ) from None
    meta = checkpoint.get("dmrnet") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "config" not in meta or "spec" not in meta:
        raise CheckpointError(f"{path}: not a dmrnet checkpoint (no 'dmrnet' section)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')!r}, this dmrnet reads "
            f"{CHECKPOINT_FORMAT}"
        )
    config = parse_config(meta["config"], source=f"{path} (stored config)")
    spec = spec_from_dict(meta["spec"])
    method = build_model(config, spec)
    try:
        method.load_state_dict(_method_state(checkpoint))
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the stored config: {error}") from None
    method.eval()
    return LoadedRun(method=method, config=config, spec=spec, checkpoint=path)


def evaluate_model(
    method: Method,
    config: Config,
    data: DataSplits,
    split: str,
    combinations: list[Combination] | None = None,
) -> EvaluationReport:
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    from dmrnet.engine import make_loader

    dataset = getattr(data, split)
    loader = make_loader(dataset, config.eval.batch_size, False, config.data.num_workers)
    if combinations is None and config.eval.combinations:
        combinations = [
            _parse(method, text, f"eval.combinations[{i}]")
            for i, text in enumerate(config.eval.combinations)
        ]
    report = build_report(
        method,
        loader,
        dataset=data.spec.name,
        method_name=config.model.method,
        split=split,
        combinations=combinations,
        availability_p=config.eval.availability_p,
        # A task that calibrates its decisions (PAD's equal-error threshold) does so on validation.
        calibration_loader=make_loader(
            data.val, config.eval.batch_size, False, config.data.num_workers
        ),
    )
    if method.hcr.enabled:  # what the HCR selected, and on which statistics
        report.extra["hcr"] = method.hcr.summary()
    return report


def _parse(method: Method, text: str, key: str) -> Combination:
    try:
        return method.modalities.parse(text)
    except DmrnetError as error:
        raise ConfigError(f"{key}: {error}") from None


def evaluate_run(
    path: str | Path,
    split: str = "test",
    combinations: list[str] | None = None,
    data_root: str | Path | None = None,
    out_dir: str | Path | None = None,
) -> EvaluationReport:
    """Evaluate a trained run (or checkpoint) on every (or the given) combination and write the
    reports into `out_dir` (default: the run directory)."""
    loaded = load_checkpoint(path)
    parsed = (
        [_parse(loaded.method, text, "--combinations") for text in combinations]
        if combinations
        else None
    )
    data = build_data_for(loaded.config, data_root)
    report = evaluate_model(loaded.method, loaded.config, data, split, parsed)
    if out_dir is None:
        checkpoints = loaded.checkpoint.parent
        run_dir = checkpoints.parent if checkpoints.name == "checkpoints" else checkpoints
        out_dir = run_dir if split == "test" else run_dir / split
    report.write(out_dir)
    write_pictures(loaded.method, getattr(data, split), report, out_dir)
    return report


def write_pictures(
    method: Method, dataset: Any, report: EvaluationReport, out_dir: str | Path
) -> Path | None:
    """The task's picture of a few samples predicted under the report's combinations
    (segmentation: predictions.png); tasks without one (classification) write nothing."""
    combinations = [r.combination for r in report.results]
    return method.task.visualize(method, dataset, combinations, Path(out_dir) / "predictions.png")


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml; is this a dmrnet run directory?")
    return load_config(path)


__all__: list[Any] = [
    "LoadedRun",
    "build_data_for",
    "build_model",
    "evaluate_model",
    "evaluate_run",
    "load_checkpoint",
    "load_run_config",
    "resolve_checkpoint",
    "stage_directories",
    "train",
    "training_stages",
]
