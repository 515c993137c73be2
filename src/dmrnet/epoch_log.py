"""One line per epoch in the run's log (train.log), for runs nobody watches on a terminal.

Non-interactive runs (CI, nohup, cluster jobs) get no progress bar; this callback writes what the
bar would have shown, once per epoch, through the `dmrnet` logger:

    epoch 3/60: train loss 0.512 (kl 0.024) | val mean 0.951 worst 0.702 full 0.99 | hard: mor

It also warns when the hard-combination regularizer will never switch on (its warm-up is as long
as the fit), the usual surprise of short runs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("dmrnet")

VALIDATION_KEYS = ("mean", "worst", "full")  # the summaries the line shows, of val/<key>


class EpochLog(pl.Callback):
    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hcr = getattr(getattr(pl_module, "method", None), "hcr", None)
        if hcr is not None and hcr.enabled and hcr.config.warmup_epochs >= trainer.max_epochs:
            log.warning(
                "model.hcr.warmup_epochs=%d >= %d epochs of training: the hard-combination "
                "regularizer (rule %r) will never switch on; lower model.hcr.warmup_epochs or "
                "train longer",
                hcr.config.warmup_epochs,
                trainer.max_epochs,
                hcr.config.rule,
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sums.clear()
        self.steps = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # callback_metrics holds this step's logged train/* values: sum them into epoch means.
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):
                self.sums[key.removeprefix("train/")] += float(value)
        self.steps += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        log.info(self.line(trainer, pl_module))

    def line(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str:
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if self.steps:
            means = {name: total / self.steps for name, total in self.sums.items()}
            terms = ", ".join(f"{k} {v:.4g}" for k, v in means.items() if k != "loss")
            parts[0] += f": train loss {means.get('loss', float('nan')):.4g}"
            if terms:
                parts[0] += f" ({terms})"
        metrics = trainer.callback_metrics
        shown = [
            f"{k} {float(metrics[f'val/{k}']):.4g}"
            for k in VALIDATION_KEYS
            if f"val/{k}" in metrics
        ]
        if shown:
            parts.append("val " + " ".join(shown))
        hcr = getattr(getattr(pl_module, "method", None), "hcr", None)
        if hcr is not None and hcr.enabled:
            parts.append(f"hard: {hcr.describe()}")
        return " | ".join(parts)
