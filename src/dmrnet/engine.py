"""Training engine: a generic LightningModule around any `Method`, and the Trainer.

The engine knows the methods interface and nothing about DMRNet: it samples the training mask,
encodes, decodes, asks the method for its loss, validates every combination each epoch (the
best checkpoint is chosen on the validation mean over combinations) and checkpoints.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from dmrnet.config import Config, OptimizerConfig, SchedulerConfig
from dmrnet.data.base import CHECKPOINT_FORMAT, spec_to_dict
from dmrnet.evaluate import CombinationEvaluator
from dmrnet.methods import LossOutput, Method
from dmrnet.metrics import summarize

log = logging.getLogger("dmrnet")

MONITOR = "val/mean"


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
    return method.loss(output, batch["target"], mask)


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


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    # BatchNorm cannot train on a final batch of one sample: drop the ragged end in training.
    drop_last = shuffle and len(dataset) > batch_size  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator if shuffle else None,
        persistent_workers=num_workers > 0,
    )


def build_trainer(
    config: Config,
    run_dir: Path,
    steps_per_epoch: int,
    maximize: bool = True,
    epochs: int | None = None,
    monitor: str = MONITOR,
) -> pl.Trainer:
    """Trainer with best (on `monitor`, by default the validation mean over combinations) and
    last checkpoints. `epochs` defaults to `train.epochs` (a training stage may set its own)."""
    train = config.train
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max" if maximize else "min",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    return pl.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=train.precision,  # type: ignore[arg-type]
        max_epochs=epochs if epochs is not None else train.epochs,
        gradient_clip_val=train.gradient_clip,
        deterministic=train.deterministic,
        callbacks=[checkpoint],
        logger=CSVLogger(run_dir, name="logs", version=""),
        log_every_n_steps=min(train.log_every_n_steps, max(1, steps_per_epoch)),
        enable_progress_bar=train.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
    )
