"""Training engine: a generic LightningModule around any `Method`, and the Trainer.

The engine knows the methods interface and nothing about DMRNet: it samples the training mask,
encodes, decodes, asks the method for its loss, validates every combination each epoch (the
best checkpoint is chosen on the validation mean over combinations) and checkpoints.

Checkpoints are what an exact resume needs (see docs/runs.md): `RunState` writes last.ckpt
before the first epoch and after every epoch, with every random state (torch, numpy, python and
the training loader's shuffling generator), so a resumed run replays the interrupted epoch from
its start exactly as the uninterrupted run played it. Every checkpoint is written atomically
with its sha256 beside it (`AtomicCheckpointIO`).
"""

from __future__ import annotations

import io
import logging
import math
import random
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO

from dmrnet.config import Config, OptimizerConfig, SchedulerConfig, TrainConfig
from dmrnet.data.base import CHECKPOINT_FORMAT, spec_to_dict
from dmrnet.epoch_log import EpochLog
from dmrnet.errors import ConfigError, NonFiniteError
from dmrnet.evaluate import CombinationEvaluator
from dmrnet.files import CHECKSUM_SUFFIX, write_with_checksum
from dmrnet.methods import LossOutput, Method
from dmrnet.metrics import summarize

log = logging.getLogger("dmrnet")

MONITOR = "val/mean"
LAST = "last.ckpt"


def build_optimizer(params: Any, config: OptimizerConfig) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(epoch: int, config: SchedulerConfig, epochs: int) -> float:
    """Multiplier of the base learning rate at `epoch` (0-based), warm-up included."""
    if epoch < config.warmup_epochs:
        # Linear warm-up from lr / 10 to lr (the paper's anti-spoofing code warms up ~5 epochs).
        return 0.1 + 0.9 * epoch / config.warmup_epochs
    if config.name == "step":
        return config.gamma ** (epoch // config.step_size)
    if config.name == "multistep":
        return config.gamma ** sum(epoch >= m for m in config.milestones)
    if config.name == "cosine":
        span = max(1, epochs - config.warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / span))
    return 1.0


def training_loss(method: Method, batch: dict[str, Any]) -> LossOutput:
    """One training step's loss: draw the modality-dropout mask, encode, decode, ask the method."""
    present = batch["present"]
    mask = method.training_mask(present)  # (B, M) modality dropout
    features = method.encode(batch["inputs"], present)
    output = method.decode(features, mask)
    method.add_teacher(output, features, mask, present)  # self-distillation (model.distill)
    return method.loss(output, batch["target"], mask, present=present)


class LitMethod(pl.LightningModule):
    def __init__(self, method: Method, config: Config, epochs: int | None = None) -> None:
        super().__init__()
        self.method = method
        self.config = config
        # Epochs of this fit (a stage of a multi-stage method may have its own count).
        self.epochs = epochs if epochs is not None else config.train.epochs
        self.val_evaluator = CombinationEvaluator(method)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = training_loss(self.method, batch)
        if not bool(torch.isfinite(loss.total)):
            # Stop before the optimizer turns one bad batch into NaN weights; last.ckpt still
            # holds the end of the previous epoch.
            raise NonFiniteError(
                f"the training loss is {float(loss.total)} in epoch {self.current_epoch}, "
                f"step {batch_idx} (global step {self.global_step}; 0-based, as in metrics.csv)"
            )
        size = batch["present"].shape[0]
        self.log("train/loss", loss.total, prog_bar=True, batch_size=size)
        for name, value in loss.terms.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss.total

    def on_train_epoch_start(self) -> None:
        self._log_scalars(self.method.start_epoch(self.current_epoch))

    def on_train_epoch_end(self) -> None:
        self._log_scalars(self.method.end_epoch(self.current_epoch))

    def _log_scalars(self, scalars: dict[str, float]) -> None:
        # Already reduced across processes by the method: identical on every rank, so the
        # sync is a no-op average (and keeps Lightning from warning about unsynced logs).
        for name, value in scalars.items():
            self.log(name, value, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_evaluator.update(self.method, batch)

    def on_validation_epoch_end(self) -> None:
        results = self.val_evaluator.compute()
        self.val_evaluator.reset()
        headline = self.method.task.headline
        values = [r.metrics[headline.name] for r in results]
        summary = summarize(
            values,
            [r.combination for r in results],
            self.method.modalities,
            higher_is_better=headline.higher_is_better,
            availability_p=self.config.eval.availability_p,
        )
        for key, value in summary.items():
            if value is not None:
                self.log(f"val/{key}", value, prog_bar=key == "mean", sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        # Only what trains in this fit: a stage may freeze part of the method (e.g. a teacher).
        params = [p for p in self.method.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.config.train.optimizer)
        epochs = self.epochs
        scheduler_config = self.config.train.scheduler
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: lr_factor(epoch, scheduler_config, epochs)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to rebuild the model, in plain types (weights_only-loadable).
        checkpoint["dmrnet"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "spec": spec_to_dict(self.method.spec),
        }


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite. The sums first (one reduction per
    tensor, several times cheaper than an elementwise check of each; a NaN or an infinity makes
    its sum non-finite), and only when a sum is not finite the elementwise check, which also
    tells a real NaN or infinity from a sum that overflowed."""
    if bool(torch.stack([t.sum(dtype=torch.float32) for t in tensors]).isfinite().all()):
        return True
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written in place of Lightning's default (which stages them in the system
    temp folder and can leave a 0-byte file across filesystems): serialized in memory, then
    atomically replaced with their sha256 recorded beside them (files.write_with_checksum)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_with_checksum(Path(path), buffer.getvalue())

    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        Path(str(path) + CHECKSUM_SUFFIX).unlink(missing_ok=True)


def random_states(generator: torch.Generator | None) -> dict[str, Any]:
    """Every random state a training epoch draws from, in plain types and tensors (so the
    checkpoint stays loadable with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
        "loader": None if generator is None else generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and states.get("loader") is not None:
        generator.set_state(states["loader"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RunState(Checkpoint):
    """last.ckpt before the first epoch and after every one, with the random states and the
    number of finished epochs; stops at batch boundaries when `interrupted` says so, and on a
    non-finite gradient.

    A `Checkpoint` subclass, so Lightning runs it after the module's epoch-end hooks (the HCR's
    selection at the end of an epoch is in the checkpoint of that epoch).
    """

    def __init__(
        self,
        directory: Path,
        generator: torch.Generator | None,
        check_interrupt: Callable[[], None] = lambda: None,
        check_gradients: bool = True,
    ) -> None:
        self.path = directory / LAST
        self.generator = generator
        self.check_interrupt = check_interrupt
        self.check_gradients = check_gradients
        self.epochs_done = 0
        self.restored = False
        self.start_states: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # The states the first epoch starts from: Lightning draws the first epoch's order from
        # the loader's generator before `on_train_start`, so they are taken here.
        self.start_states = random_states(self.generator)

    def state_dict(self) -> dict[str, Any]:
        states = self.start_states if self.epochs_done == 0 else None
        return {"epochs_done": self.epochs_done, "random": states or random_states(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_done = int(state_dict["epochs_done"])
        restore_random_states(state_dict["random"], self.generator)
        self.restored = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.restored:
            self._save(trainer)  # an interruption in the first epoch can resume too

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush_logs(trainer)  # the previous epoch's epoch-end rows

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_done = trainer.current_epoch + 1
        self._flush_logs(trainer)  # the history the checkpoint vouches for is on disk first
        self._save(trainer)

    def on_train_batch_start(self, *args: Any) -> None:
        self.check_interrupt()

    def on_validation_batch_start(self, *args: Any) -> None:
        self.check_interrupt()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if not self.check_gradients:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [g for g in grads if g is not None]
        if grads and not all_finite(grads):
            raise NonFiniteError(
                f"a gradient is NaN or infinite in epoch {trainer.current_epoch}, step "
                f"{trainer.fit_loop.epoch_loop.batch_idx} (global step {trainer.global_step}; "
                "0-based, as in metrics.csv)"
            )

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path)

    @staticmethod
    def _flush_logs(trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()


def epochs_done(checkpoint: dict[str, Any]) -> int:
    """Finished epochs recorded in a checkpoint written by RunState."""
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("RunState") and isinstance(state, dict):
            return int(state["epochs_done"])
    return int(checkpoint.get("epoch", -1)) + 1  # a checkpoint from before RunState


def build_trainer(
    config: Config,
    run_dir: Path,
    steps_per_epoch: int,
    maximize: bool = True,
    epochs: int | None = None,
    monitor: str = MONITOR,
    generator: torch.Generator | None = None,
    check_interrupt: Callable[[], None] = lambda: None,
) -> pl.Trainer:
    """Trainer with best (on `monitor`, by default the validation mean over combinations) and
    last checkpoints. `epochs` defaults to `train.epochs` (a training stage may set its own).

    `generator` is the training loader's shuffling generator (its state goes into every
    checkpoint); `check_interrupt` is called at every batch boundary and may raise to stop.
    """
    train = config.train
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max" if maximize else "min",
        save_last=False,  # RunState writes last.ckpt, after this callback has updated best
        save_top_k=1,
        enable_version_counter=False,
    )
    state = RunState(
        run_dir / "checkpoints",
        generator,
        check_interrupt,
        # 16-bit mixed precision skips steps with inf gradients by design (the grad scaler).
        check_gradients=train.precision not in ("16-mixed", "16"),
    )
    return pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,  # type: ignore[arg-type]
        max_epochs=epochs if epochs is not None else train.epochs,
        gradient_clip_val=train.gradient_clip,
        accumulate_grad_batches=train.accumulate_grad_batches,
        deterministic=train.deterministic,
        callbacks=[checkpoint, state, EpochLog(), *early_stopping(train, monitor, maximize)],
        plugins=[AtomicCheckpointIO()],
        logger=build_loggers(train, run_dir),
        log_every_n_steps=min(train.log_every_n_steps, max(1, steps_per_epoch)),
        enable_progress_bar=train.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
    )


def early_stopping(train: TrainConfig, monitor: str, maximize: bool) -> list[EarlyStopping]:
    """`train.early_stopping` as a callback (none while `patience` is unset). It watches the
    checkpoint's selection metric unless it names another; a loss is minimized."""
    options = train.early_stopping
    if options.patience is None:
        return []
    watched = options.monitor or monitor
    mode = options.mode or ("min" if "loss" in watched or not maximize else "max")
    return [
        EarlyStopping(
            monitor=watched, patience=options.patience, mode=mode, min_delta=options.min_delta
        )
    ]


def build_loggers(train: TrainConfig, run_dir: Path) -> list[Logger]:
    """The loggers of `train.loggers`, all writing under RUN_DIR/logs."""
    loggers: list[Logger] = []
    for name in train.loggers:
        if name == "csv":
            loggers.append(CSVLogger(run_dir, name="logs", version=""))
        elif name == "tensorboard":
            if not any(find_spec(package) for package in ("tensorboard", "tensorboardX")):
                raise ConfigError(
                    "train.loggers: 'tensorboard' needs the tensorboard package: "
                    "pip install 'dmrnet[tensorboard]' (or drop it from train.loggers)"
                )
            loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard"))
    return loggers
