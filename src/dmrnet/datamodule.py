"""Bring your own Trainer: a LightningDataModule for a config's dataset, and the LightningModule.

`dmrnet train` builds its own Trainer (engine.build_trainer); these two pieces let a user drive
Lightning themselves, with their loggers, callbacks and strategy (docs/python-api.md):

    config = dmrnet.load_config("handwritten/dmrnet")
    data = dmrnet.DataModule(config)
    module = dmrnet.build_module(config, data.spec)
    pl.Trainer(max_epochs=5, callbacks=[...]).fit(module, datamodule=data)

Checkpoints the Trainer writes carry dmrnet's section (config, data description), so
`dmrnet.load` and `dmrnet.evaluate` read them like those of `dmrnet train`.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from dmrnet.config import Config
from dmrnet.data import DataSplits
from dmrnet.data.base import DataSpec
from dmrnet.data.loaders import make_loader
from dmrnet.engine import LitMethod
from dmrnet.errors import ConfigError
from dmrnet.plugins import with_required_plugins
from dmrnet.runs import build_data_for, build_model, training_stages


class DataModule(pl.LightningDataModule):
    """The train / validation / test splits of `config.data`, batched as `dmrnet train` does
    (`train.batch_size` per device for training, `eval.batch_size` otherwise).

    The splits are built on first use (`spec`, `setup` or a loader), once per process.
    """

    def __init__(self, config: Config, data_root: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.data_root = data_root
        self._splits: DataSplits | None = None

    @property
    def splits(self) -> DataSplits:
        if self._splits is None:
            self._splits = build_data_for(self.config, self.data_root)
        return self._splits

    @property
    def spec(self) -> DataSpec:
        """Modalities, input shapes, task and classes: what `build_module` needs."""
        return self.splits.spec

    def setup(self, stage: str | None = None) -> None:
        self.splits  # noqa: B018 (builds the splits in each process, before the loaders)

    def train_dataloader(self) -> DataLoader:
        data = self.config.data
        return make_loader(
            self.splits.train,
            self.config.train.batch_size,
            True,
            data.num_workers,
            self.config.seed,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits.val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.splits.test)

    def _eval_loader(self, dataset: object) -> DataLoader:
        return make_loader(
            dataset,  # type: ignore[arg-type]
            self.config.eval.batch_size,
            False,
            self.config.data.num_workers,
        )


def build_module(config: Config, spec: DataSpec) -> LitMethod:
    """The LightningModule that `dmrnet train` fits: the config's method for data `spec`, with
    dmrnet's training step, every-combination validation (`val/mean`, `val/worst`, ...) and
    optimizer. Its checkpoints record the plugin modules the config needs."""
    config = with_required_plugins(config)
    method = build_model(config, spec)
    stages = training_stages(method, config)
    if len(stages) > 1:
        names = ", ".join(stage.name for stage in stages)
        raise ConfigError(
            f"model.method {config.model.method!r} trains in stages ({names}), which one "
            "Trainer.fit cannot do; train it with dmrnet.train"
        )
    return LitMethod(method, config)


__all__ = ["DataModule", "LitMethod", "build_module"]
