"""Run directories: train a config into one, load a model back from one, evaluate it.

RUN_DIR/
  config.yaml            the resolved config
  .lock                  the writing process (pid, host, start time); one writer per run
  checkpoints/best.ckpt  best validation mean over combinations
  checkpoints/last.ckpt  before the first epoch and after every epoch (what --resume continues)
  checkpoints/*.sha256   each checkpoint's sha256, verified when it is loaded
  logs/metrics.csv       per-step and per-epoch logs (losses, val summaries, HCR statistics)
  train.log              the run's log lines
  results.{json,csv,md,png}  every-combination evaluation on the test split
  MODEL_CARD.md          dataset, inputs, method, per-combination summary, intended use, limits
  predictions.png        dense tasks (segmentation): a few test samples, predicted under each
                         combination
  evaluations/<name>/    later `dmrnet evaluate` reports (other splits, subsets, checkpoints)
  stages/<name>/         earlier stages of a multi-stage method (e.g. MMANet's teacher): their
                         own checkpoints/ and logs/, and STAGE_DONE once finished

`train` runs named steps: `plan` (everything that can fail on user input, before anything is
written), `open_run` (directory, lock, config), `fit_stage` for each training stage,
`test_evaluation` and `write_reports`. docs/runs.md says what resume guarantees.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dmrnet.calibration import (
    Calibration,
    check_availability,
    put_calibration,
    read_calibration,
    store_calibration,
)
from dmrnet.checks import check_splits
from dmrnet.config import Config, apply_overrides, parse_config, read_yaml
from dmrnet.data import DataSplits, build_data
from dmrnet.data.base import CHECKPOINT_FORMAT, DataSpec, spec_from_dict
from dmrnet.data.loaders import make_loader
from dmrnet.errors import (
    CheckpointError,
    ConfigError,
    DmrnetError,
    NonFiniteError,
    RunInterrupted,
)
from dmrnet.evaluate import EvaluationReport, build_report
from dmrnet.files import RunLock, atomic_write, update_checkpoint, verify_checksum, write_text
from dmrnet.methods import Method, build_method
from dmrnet.methods.stages import StagedMethod, TrainingStage
from dmrnet.modalities import Combination
from dmrnet.model_card import write_model_card
from dmrnet.plugins import with_required_plugins
from dmrnet.tasks import build_task

log = logging.getLogger("dmrnet")

STAGE_DONE = "STAGE_DONE"  # marks a finished earlier stage of a multi-stage method
HISTORY = "metrics.before-resume.csv"  # metrics rows kept aside while a resumed fit runs

# Keys `--resume RUN --set KEY=VALUE` may change: they extend a run or change only how it is
# shown or evaluated, never what the finished epochs trained.
RESUMABLE_KEYS = (
    "train.epochs",
    "train.progress_bar",
    "train.log_every_n_steps",
    "eval.batch_size",
    "data.root",
)


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


# --- the steps of `train` ----------------------------------------------------------------------


@dataclass
class RunPlan:
    """A run checked against its inputs, before anything is written."""

    config: Config
    run_dir: Path
    data_root: str | Path | None
    resume: bool
    data: DataSplits
    method: Method
    stages: list[TrainingStage]
    directories: list[Path]
    train_loader: Any
    val_loader: Any
    # Finished epochs per stage, read from each stage's last.ckpt (0 where there is none).
    epochs_done: list[int] = field(default_factory=list)

    def last(self, index: int) -> Path:
        return self.directories[index] / "checkpoints" / "last.ckpt"

    @property
    def finished(self) -> bool:
        """Every stage has all its epochs and the test results are written."""
        fitted = all(
            done >= stage.epochs for done, stage in zip(self.epochs_done, self.stages, strict=True)
        )
        return fitted and (self.run_dir / "results.json").is_file()

    def resume_command(self) -> str:
        command = ["dmrnet", "train", "--resume", str(self.run_dir)]
        if self.data_root is not None:
            command += ["--data-root", str(self.data_root)]
        return shlex.join(command)


def plan(
    config: Config,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    resume: bool = False,
) -> RunPlan:
    """Check everything that can fail on user input: the run directory's state, the data (and
    its splits), the model, eval.combinations and every Trainer option. Writes nothing."""
    import lightning.pytorch as pl

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: is a file, not a directory")
    config = with_required_plugins(config)  # recorded, so a fresh process can load the run
    pl.seed_everything(config.seed, workers=True, verbose=False)
    data = build_data_for(config, data_root)
    check_data(data)
    method = build_model(config, data.spec)
    # Parsed now so that a typo fails before training, not after it (evaluate_model uses them).
    parse_combinations(method, config.eval.combinations, "eval.combinations")
    stages = training_stages(method, config)
    directories = stage_directories(run_dir, stages)
    check_trainer(config)
    train_loader = make_loader(
        data.train, config.train.batch_size, True, config.data.num_workers, config.seed
    )
    val_loader = make_loader(data.val, config.eval.batch_size, False, config.data.num_workers)
    run = RunPlan(
        config,
        run_dir,
        data_root,
        resume,
        data,
        method,
        stages,
        directories,
        train_loader,
        val_loader,
    )
    lasts = [run.last(i) for i in range(len(stages))]
    if resume and not any(last.is_file() for last in lasts):
        raise CheckpointError(f"{run_dir}: nothing to resume, {lasts[0]} does not exist")
    if not resume and _is_rank_zero() and _has_checkpoints(directories):
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume or choose another --run-dir"
        )
    run.epochs_done = [
        _resumable_epochs(last, config, stage) if resume and last.is_file() else 0
        for last, stage in zip(lasts, stages, strict=True)
    ]
    return run


def check_data(data: DataSplits) -> None:
    """Degenerate splits fail before training: an empty split, one training class, or a class
    that only validation or test has (classification)."""
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}  # type: ignore[arg-type]
    targets = {split: getattr(getattr(data, split), "targets", None) for split in sizes}
    classification = data.spec.task == "classification" and all(
        isinstance(t, torch.Tensor) for t in targets.values()
    )
    check_splits(sizes, targets if classification else None, data.spec.name)  # type: ignore[arg-type]


def parse_combinations(
    method: Method, texts: list[str] | None, key: str
) -> list[Combination] | None:
    return [_parse(method, text, f"{key}[{i}]") for i, text in enumerate(texts)] if texts else None


def check_trainer(config: Config) -> None:
    """The Trainer options against Lightning itself: the strategy's name, the accelerator's
    presence, devices and precision together. Errors name the key, never a Lightning traceback."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    train = config.train
    strategies = ["auto", "ddp", "ddp_spawn", "deepspeed", "fsdp", "single_device"]
    if train.strategy not in StrategyRegistry and train.strategy not in strategies:
        known = ", ".join(sorted({*strategies, *StrategyRegistry.available_strategies()}))
        raise ConfigError(f"train.strategy: unknown strategy {train.strategy!r}; known: {known}")
    name = {"gpu": "cuda"}.get(train.accelerator, train.accelerator)
    if name != "auto" and name in AcceleratorRegistry:
        accelerator = AcceleratorRegistry[name]["accelerator"]
        if not accelerator.is_available():
            raise ConfigError(
                f"train.accelerator: {train.accelerator!r} is not available on this machine; "
                "use cpu or auto"
            )
    try:
        from lightning.pytorch.trainer.connectors.accelerator_connector import (
            _AcceleratorConnector,
        )

        _AcceleratorConnector(
            devices=train.devices,
            num_nodes=train.num_nodes,
            accelerator=train.accelerator,
            strategy=train.strategy,
            precision=train.precision,  # type: ignore[arg-type]
        )
    except Exception as error:  # Lightning raises several types for bad combinations
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"train: accelerator={train.accelerator!r}, devices={train.devices!r}, "
            f"strategy={train.strategy!r}, precision={train.precision!r} do not work together: "
            f"{first}"
        ) from None


@contextlib.contextmanager
def open_run(run: RunPlan) -> Iterator[None]:
    """The run directory, locked for this process, with its config and train.log. A run that
    fails before its first checkpoint is removed again (nothing half-written is left)."""
    created = not run.run_dir.exists()
    lock = None
    if _is_rank_zero():
        try:
            run.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DmrnetError(f"{run.run_dir}: cannot create: {error.strerror or error}") from None
        lock = RunLock(run.run_dir).acquire()
    handler = _add_file_log(run.run_dir) if _is_rank_zero() else None
    if lock is not None and lock.describe_stale():
        log.warning("%s", lock.describe_stale())
    if lock is not None:
        # A process killed between writing a temporary file and renaming it (files.atomic_write)
        # leaves the temporary behind; with the lock held, no writer is using one.
        for stale in run.run_dir.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)
    try:
        if _is_rank_zero() and (not run.resume or _config_changed(run)):
            write_text(run.run_dir / "config.yaml", _config_text(run.config))
        yield
    except BaseException:
        if created and _is_rank_zero() and not _has_checkpoints(run.directories):
            _remove_handler(handler)
            handler = None
            shutil.rmtree(run.run_dir, ignore_errors=True)
            lock = None
        raise
    finally:
        _remove_handler(handler)
        if lock is not None:
            lock.release()


def fit_stage(run: RunPlan, index: int, guard: SignalGuard) -> None:
    """Fit stage `index` from its start, or from its last.ckpt when resuming (restoring the
    random states, so the interrupted epoch replays exactly); skip what is already done."""
    stage, directory, last = run.stages[index], run.directories[index], run.last(index)
    final = index == len(run.stages) - 1
    done_marker = directory / STAGE_DONE
    generator = run.train_loader.generator
    if len(run.stages) > 1:
        if not final and done_marker.is_file():
            _load_weights(run.method, resolve_checkpoint(directory))
            _restore_random_states(last, generator)  # as the uninterrupted run left them
            return
        log.info("training stage %r (%d epochs)", stage.name, stage.epochs)
        run.method.begin_stage(stage.name)  # type: ignore[attr-defined]
    continues = last.is_file() and run.resume
    if continues and run.epochs_done[index] >= stage.epochs:
        log.info("stage %r already trained its %d epochs", stage.name, stage.epochs)
        _restore_random_states(last, generator)
    else:
        from dmrnet.engine import LitMethod, build_trainer

        if continues:
            _set_history_aside(directory, run.epochs_done[index])
        trainer = build_trainer(
            run.config,
            directory,
            len(run.train_loader),
            maximize=run.method.task.headline.higher_is_better,
            epochs=stage.epochs,
            monitor=stage.monitor,
            generator=generator,
            check_interrupt=guard.check,
        )
        try:
            with guard.deferred():
                trainer.fit(
                    LitMethod(run.method, run.config, epochs=stage.epochs),
                    run.train_loader,
                    run.val_loader,
                    ckpt_path=last if continues else None,
                    weights_only=True if continues else None,
                )
        except NonFiniteError as error:
            raise NonFiniteError(
                f"{run.run_dir}: training stopped: {error}; {last} keeps the last good state; "
                "lower train.optimizer.lr, set train.gradient_clip or fix the loss weights"
            ) from None
        except BaseException:
            guard.check()  # Lightning turns SIGTERM into SystemExit: report it as the signal
            raise
        finally:
            if _is_rank_zero():
                _merge_history(directory)
        guard.check()  # a signal during the last epoch still stops before the evaluation
    if not final:
        # The next stage starts from this stage's best weights (e.g. the best teacher).
        _load_weights(run.method, resolve_checkpoint(directory))
        if _is_rank_zero():
            write_text(done_marker, f"stage {stage.name!r} finished\n")


def test_evaluation(run: RunPlan) -> tuple[LoadedRun, EvaluationReport]:
    """The run's best checkpoint, evaluated on every combination of the test split (after its
    product-of-experts weights are fitted on validation, for a method that has them)."""
    loaded = load_checkpoint(resolve_checkpoint(run.run_dir))
    report = evaluate_model(loaded.method, loaded.config, run.data, "test", fit_ensemble=True)
    fitted = "ensemble" in report.extra or report.calibration is not None
    if fitted and _is_rank_zero():
        # Fitted on validation after training: predict and evaluate reuse them.
        update_checkpoint(loaded.checkpoint, lambda c: _store_fitted(c, loaded.method, report))
    return loaded, report


def _store_fitted(checkpoint: dict[str, Any], method: Method, report: EvaluationReport) -> None:
    """Put into `checkpoint` what `test_evaluation` fitted: the product-of-experts weights (a
    buffer of the method) and the calibration."""
    if "ensemble" in report.extra:
        state = {f"method.{key}": value for key, value in method.state_dict().items()}
        checkpoint["state_dict"].update(state)
    if report.calibration is not None:
        put_calibration(checkpoint, report.calibration, method.modalities)


def write_reports(run: RunPlan, loaded: LoadedRun, report: EvaluationReport) -> None:
    report.write(run.run_dir)
    write_pictures(loaded.method, run.data.test, report, run.run_dir)
    write_model_card(run.run_dir, loaded.config, loaded.spec, report)


def train(
    config: Config,
    run_dir: str | Path,
    data_root: str | Path | None = None,
    resume: bool = False,
) -> EvaluationReport | None:
    """Train `config` into `run_dir`, then evaluate every combination on the test split.

    Everything that can fail on user input is checked first (`plan`), so a bad run leaves
    nothing behind. With `resume`, training continues from the last checkpoint of the stage
    that was interrupted, exactly as the uninterrupted run would have (docs/runs.md); a finished
    run is left as it is. Returns the test report (rank 0 only; None for a finished run).

    A method with several training stages (methods/stages.py) has each fitted in turn, with its
    own epochs, checkpoints and selection metric; a finished stage is marked with a file
    `STAGE_DONE` and its best weights are loaded before the next stage begins.
    """
    run = plan(config, run_dir, data_root, resume)
    if run.finished and not _config_changed(run):
        log.info(
            "%s is finished (%d epochs, results.json written): nothing to do; extend it with "
            "`dmrnet train --resume %s --set train.epochs=N`",
            run.run_dir,
            run.stages[-1].epochs,
            shlex.quote(str(run.run_dir)),
        )
        return None
    with open_run(run), SignalGuard(run) as guard:
        for index in range(len(run.stages)):
            fit_stage(run, index, guard)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # The test evaluation below runs on rank 0 alone: nothing may wait for the others.
            is_zero = torch.distributed.get_rank() == 0
            torch.distributed.destroy_process_group()
            if not is_zero:
                return None
        if not _is_rank_zero():
            return None
        loaded, report = test_evaluation(run)
        write_reports(run, loaded, report)
    return report


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """A run's stored config, with `overrides` of the keys resuming may change (RESUMABLE_KEYS,
    e.g. train.epochs to extend a run); any other key is refused by name."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml; is this a dmrnet run directory?")
    raw = read_yaml(path)
    for override in overrides or []:
        key = override.partition("=")[0].strip()
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--set {key}: cannot change when resuming {run_dir} (the finished epochs were "
                f"trained with the stored value); keys you may change: {', '.join(RESUMABLE_KEYS)}"
            )
    return parse_config(apply_overrides(raw, list(overrides or [])), source=str(path))


# --- signals -----------------------------------------------------------------------------------


class SignalGuard:
    """SIGINT and SIGTERM become RunInterrupted, carrying the command that resumes the run.

    While a fit runs (`deferred`), a signal is only recorded and the fit stops at the next batch
    boundary (RunState calls `check`), so no checkpoint write is ever cut; outside a fit, or at a
    second signal, it raises at once (every file is written atomically, so that is safe too).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run: RunPlan) -> None:
        self.run = run
        self.received: int | None = None
        self.defer = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.defer = True
        try:
            yield
        finally:
            self.defer = False

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if not (first and self.defer):
            raise self.error()

    def check(self) -> None:
        if self.received is not None:
            raise self.error()

    def error(self) -> RunInterrupted:
        assert self.received is not None
        name = signal.Signals(self.received).name
        last = self.run.last(len(self.run.stages) - 1)
        return RunInterrupted(
            f"interrupted by {name}; {last} holds the last finished epoch; resume with: "
            f"{self.run.resume_command()}",
            self.received,
        )


# --- helpers of the steps ----------------------------------------------------------------------


def _add_file_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("dmrnet").addHandler(handler)
    logging.getLogger("dmrnet").setLevel(logging.INFO)
    return handler


def _remove_handler(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("dmrnet").removeHandler(handler)
        handler.close()


def _config_text(config: Config) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _config_changed(run: RunPlan) -> bool:
    stored = run.run_dir / "config.yaml"
    return not stored.is_file() or stored.read_text() != _config_text(run.config)


def _has_checkpoints(directories: list[Path]) -> bool:
    return any((d / "checkpoints").exists() for d in directories)


def _load_weights(method: Method, path: Path) -> None:
    method.load_state_dict(_method_state(read_checkpoint(path)))


def _restore_random_states(last: Path, generator: torch.Generator | None) -> None:
    from dmrnet.engine import restore_random_states

    for key, state in read_checkpoint(last).get("callbacks", {}).items():
        if key.startswith("RunState"):
            restore_random_states(state["random"], generator)


def _resumable_epochs(last: Path, config: Config, stage: TrainingStage) -> int:
    """Finished epochs in `last`, after checking it can be resumed with `config`."""
    from dmrnet.engine import epochs_done

    checkpoint = read_checkpoint(last)
    _check_method(_stored_config(checkpoint, last), config, last)
    done = epochs_done(checkpoint)
    if done > stage.epochs:
        raise ConfigError(
            f"train.epochs={config.train.epochs}: stage {stage.name!r} has already trained "
            f"{done} epochs; a run can be extended, not shortened"
        )
    return done


def _check_method(stored: Config, expected: Config, path: Path) -> None:
    if stored.model.method != expected.model.method:
        raise CheckpointError(
            f"{path}: a {stored.model.method!r} checkpoint, but the run's config.yaml says "
            f"{expected.model.method!r}; it does not belong to this run"
        )


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(path: Path, tables: list[tuple[list[str], list[dict[str, str]]]]) -> None:
    columns = sorted({name for names, _ in tables for name in names})
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for _, rows in tables:
            writer.writerows(rows)


def _set_history_aside(directory: Path, epochs_done: int) -> None:
    """Before a resumed fit: keep the rows of the finished epochs in HISTORY (Lightning's CSV
    logger starts metrics.csv afresh) and drop those of the interrupted epoch, which is replayed.
    A HISTORY left by an earlier interrupted resume is part of the history too."""
    logs = directory / "logs"
    metrics, history = logs / "metrics.csv", logs / HISTORY
    tables = [_read_rows(history), _read_rows(metrics)]
    kept = [(names, [r for r in rows if _epoch(r) < epochs_done]) for names, rows in tables]
    _write_rows(history, kept)
    metrics.unlink(missing_ok=True)


def _merge_history(directory: Path) -> None:
    """After a resumed fit (finished or not): metrics.csv := HISTORY rows + the new rows."""
    logs = directory / "logs"
    metrics, history = logs / "metrics.csv", logs / HISTORY
    if history.is_file():
        _write_rows(metrics, [_read_rows(history), _read_rows(metrics)])
        history.unlink()


def _epoch(row: dict[str, str]) -> float:
    try:
        return float(row.get("epoch") or -1)
    except ValueError:
        return -1


@dataclass
class LoadedRun:
    method: Method
    config: Config
    spec: DataSpec
    checkpoint: Path
    calibration: Calibration | None = None  # fitted after training (dmrnet.calibration)


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


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents: its sha256 checked against the one recorded beside it, loaded
    with `weights_only=True` (a checkpoint can never execute code). Corrupt, truncated or
    foreign files raise CheckpointError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error.strerror or error}") from None
    verify_checksum(path, data)
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise CheckpointError(
            f"{path}: not a loadable dmrnet checkpoint ({first_line}); dmrnet loads checkpoints "
            "with weights_only=True and never unpickles arbitrary objects"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a dmrnet checkpoint (no weights)")
    return checkpoint


def _stored_config(checkpoint: dict[str, Any], path: Path) -> Config:
    meta = checkpoint.get("dmrnet")
    if not isinstance(meta, dict) or "config" not in meta or "spec" not in meta:
        raise CheckpointError(f"{path}: not a dmrnet checkpoint (no 'dmrnet' section)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {meta.get('format')!r}, this dmrnet reads "
            f"{CHECKPOINT_FORMAT}"
        )
    return parse_config(meta["config"], source=f"{path} (stored config)")


def load_checkpoint(path: str | Path) -> LoadedRun:
    """Rebuild a trained method from a checkpoint (see `read_checkpoint`). Weights that are not
    finite are refused: they could only give NaN predictions."""
    path = resolve_checkpoint(path)
    checkpoint = read_checkpoint(path)
    config = _stored_config(checkpoint, path)
    spec = spec_from_dict(checkpoint["dmrnet"]["spec"])
    state = _method_state(checkpoint)
    method = build_model(config, spec)
    # Learned weights only: some buffers (HCR statistics not yet seen) are NaN by design.
    for name, _ in method.named_parameters():
        tensor = state.get(name)
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name!r} holds NaN or infinite values")
    try:
        method.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match the stored config: {first}") from None
    method.eval()
    calibration = read_calibration(checkpoint["dmrnet"], spec.modalities)
    return LoadedRun(method, config, spec, path, calibration)


def evaluate_model(
    method: Method,
    config: Config,
    data: DataSplits,
    split: str,
    combinations: list[Combination] | None = None,
    calibration: Calibration | None = None,
    fit_ensemble: bool = False,
) -> EvaluationReport:
    """Evaluate `split` with `calibration`, else one fitted on the validation split; with
    `fit_ensemble`, the method's product-of-experts weights are first chosen on validation as
    `eval.ensemble_fit` says (dmrnet.ensemble; results.json "ensemble")."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    dataset = getattr(data, split)
    loader = make_loader(dataset, config.eval.batch_size, False, config.data.num_workers)
    validation = make_loader(data.val, config.eval.batch_size, False, config.data.num_workers)
    ensemble = None
    if fit_ensemble:
        from dmrnet.ensemble import fit_ensemble as fit

        ensemble = fit(method, validation, config.eval.ensemble_fit)
    if combinations is None:
        combinations = parse_combinations(method, config.eval.combinations, "eval.combinations")
    report = build_report(
        method,
        loader,
        dataset=data.spec.name,
        method_name=config.model.method,
        split=split,
        combinations=combinations,
        availability_p=config.eval.availability_p,
        # Temperatures and the task's decision values (PAD's equal-error threshold).
        calibration_loader=validation,
        calibration=calibration,
        target_accuracy=config.eval.target_accuracy,
        availability=_availability(method, config),
    )
    if ensemble is not None:
        report.extra["ensemble"] = ensemble
    if method.hcr.enabled:  # what the HCR selected, and on which statistics
        report.extra["hcr"] = method.hcr.summary()
    return report


def _availability(method: Method, config: Config) -> dict[str, float] | None:
    if config.eval.availability is not None:
        check_availability(config.eval.availability, method.modalities, "eval.availability")
    return config.eval.availability


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
    availability: dict[str, float] | None = None,
    target_accuracy: float | None = None,
) -> tuple[EvaluationReport, Path]:
    """Evaluate a trained run (or checkpoint) on every (or the given) combination and write the
    reports into `out_dir`; returns the report and where it was written. `availability` and
    `target_accuracy` replace the stored config's `eval.availability` and
    `eval.target_accuracy`. A checkpoint without calibration (trained before it existed) is
    calibrated on validation now and the calibration stored in it.

    A run's own results are never overwritten: by default the reports go to
    RUN/evaluations/<split>-<checkpoint>[-<combinations>]/ (beside the checkpoint's folder for
    a checkpoint outside a run). A checkpoint inside a run must match the run's config.yaml.
    """
    checkpoint = resolve_checkpoint(path)
    checkpoints = checkpoint.parent
    run_dir = checkpoints.parent if checkpoints.name == "checkpoints" else None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        # Before the weights are built: a foreign checkpoint's weights may not even fit.
        stored = _stored_config(read_checkpoint(checkpoint), checkpoint)
        _check_method(stored, load_run_config(run_dir), checkpoint)
    loaded = load_checkpoint(checkpoint)
    if availability is not None:
        check_availability(availability, loaded.spec.modalities, "--availability")
    changes = {"availability": availability, "target_accuracy": target_accuracy}
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        evaluation = loaded.config.eval.model_copy(update=changes)
        loaded.config = loaded.config.model_copy(update={"eval": evaluation})
    parsed = parse_combinations(loaded.method, combinations, "--combinations")
    if out_dir is None:
        name = _evaluation_name(split, loaded.checkpoint, combinations)
        out_dir = (run_dir or checkpoints) / "evaluations" / name
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DmrnetError(f"--out {out_dir}: is a file; cannot write the reports into it")
    data = build_data_for(loaded.config, data_root)
    report = evaluate_model(loaded.method, loaded.config, data, split, parsed, loaded.calibration)
    if loaded.calibration is None and report.calibration is not None and parsed is None:
        store_calibration(loaded.checkpoint, report.calibration, loaded.spec.modalities)
        log.info("calibration fitted on validation and stored in %s", loaded.checkpoint)
    report.write(out_dir)
    write_pictures(loaded.method, getattr(data, split), report, out_dir)
    return report, out_dir


def _evaluation_name(split: str, checkpoint: Path, combinations: list[str] | None) -> str:
    parts = [split, checkpoint.stem]
    if combinations:
        chosen = "_".join(combinations)
        safe = "".join(c if c.isalnum() or c in "+-_" else "-" for c in chosen)
        if len(safe) > 60:
            digest = hashlib.sha256(chosen.encode()).hexdigest()[:8]
            safe = f"{len(combinations)}-combinations-{digest}"
        parts.append(safe)
    return "-".join(parts)


def write_pictures(
    method: Method, dataset: Any, report: EvaluationReport, out_dir: str | Path
) -> Path | None:
    """The task's picture of a few samples predicted under the report's combinations
    (segmentation: predictions.png); tasks without one (classification) write nothing."""
    combinations = [r.combination for r in report.results]
    return method.task.visualize(method, dataset, combinations, Path(out_dir) / "predictions.png")


def load_run_config(run_dir: str | Path) -> Config:
    return resume_config(run_dir)


__all__: list[Any] = [
    "LoadedRun",
    "build_data_for",
    "build_model",
    "evaluate_model",
    "evaluate_run",
    "load_checkpoint",
    "load_run_config",
    "plan",
    "read_checkpoint",
    "resolve_checkpoint",
    "resume_config",
    "stage_directories",
    "train",
    "training_stages",
]
