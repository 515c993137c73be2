"""The Python training API: dmrnet.train / evaluate from any config form, the DataModule and the
LightningModule with a user's own Trainer, and the Trainer options of the config."""

import json
import re

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger

import dmrnet
from dmrnet.config import parse_config
from dmrnet.engine import build_trainer
from dmrnet.errors import ConfigError
from dmrnet.workflow import as_config


def test_package_exports_are_the_documented_api():
    from dmrnet import _EXPORTS

    assert sorted([*_EXPORTS, "__version__"]) == sorted(dmrnet.__all__)
    for name in _EXPORTS:
        assert getattr(dmrnet, name) is not None


def test_config_forms_give_the_same_config(make_config, tmp_path):
    raw = make_config()
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    from_dict = as_config(raw, ["train.epochs=5"])
    assert from_dict == as_config(path, ["train.epochs=5"])
    assert from_dict == as_config(parse_config(raw), ["train.epochs=5"])
    assert from_dict.train.epochs == 5 and raw["train"]["epochs"] == 2  # the dict is not changed
    with pytest.raises(ConfigError, match="config dict: invalid config"):
        as_config({**raw, "trian": {}})
    with pytest.raises(ConfigError, match="got int"):
        as_config(3)


def test_train_then_evaluate_from_python(make_config, tmp_path):
    run_dir = tmp_path / "run"
    report = dmrnet.train(make_config(), run_dir, overrides=["train.epochs=1"])
    assert len(report.results) == 7
    assert json.loads((run_dir / "results.json").read_text())["summary"]["mean"] == pytest.approx(
        report.summary()["mean"]
    )
    val = dmrnet.evaluate(run_dir, split="val", combinations=["a", "a+b"], out_dir=tmp_path / "v")
    assert [val.modalities.format(r.combination) for r in val.results] == ["a", "a+b"]
    assert (tmp_path / "v" / "results.json").is_file()


def test_own_trainer_with_the_datamodule_and_module(make_config, tmp_path):
    config = as_config(make_config(), ["train.epochs=2"])
    data = dmrnet.DataModule(config)
    module = dmrnet.build_module(config, data.spec)
    assert isinstance(module, dmrnet.LitMethod)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="logs"),
        callbacks=[EarlyStopping(monitor="val/mean", mode="max", patience=5)],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    assert "val/mean" in trainer.callback_metrics
    path = tmp_path / "own.ckpt"
    trainer.save_checkpoint(path)
    loaded = dmrnet.load(path)
    assert loaded.config.train.epochs == 2
    assert len(dmrnet.evaluate(path, out_dir=tmp_path / "eval").results) == 7


def test_build_module_refuses_methods_that_train_in_stages(make_config):
    config = as_config(make_config("mmanet"))
    data = dmrnet.DataModule(config)
    with pytest.raises(ConfigError, match="trains in stages"):
        dmrnet.build_module(config, data.spec)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.precision=8", "train.precision: Input should be"),
        ("train.devices=0", "train.devices: expected a device count"),
        # An unknown strategy name is checked against Lightning's registry when a run is
        # planned (tests/test_bad_inputs.py), so that parsing a config never imports Lightning.
        ("train.loggers=[csv, wandb]", "train.loggers.1: Input should be 'csv' or 'tensorboard'"),
        ("train.accumulate_grad_batches=0", "train.accumulate_grad_batches: Input should be"),
        ("train.early_stopping.patience=0", "train.early_stopping.patience: Input should be"),
        ("train.accelerator=gpus", "train.accelerator: Input should be"),
    ],
)
def test_bad_trainer_options_name_the_key(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        as_config(make_config(), [override])


def test_trainer_options_reach_the_trainer(make_config, tmp_path):
    config = as_config(
        make_config(),
        [
            "train.precision=bf16",  # Lightning's short form, stored in full
            "train.gradient_clip=0.5",
            "train.accumulate_grad_batches=3",
            "train.early_stopping.patience=2",
            "train.deterministic=true",
        ],
    )
    assert config.train.precision == "bf16-mixed"
    trainer = build_trainer(config, tmp_path, steps_per_epoch=5, maximize=False)
    assert trainer.gradient_clip_val == 0.5
    assert trainer.accumulate_grad_batches == 3
    assert trainer.precision == "bf16-mixed"
    (stopping,) = [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]
    # By default it watches the checkpoint's selection metric, in its direction.
    assert (stopping.monitor, stopping.patience, stopping.mode) == ("val/mean", 2, "min")
    assert torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


def test_early_stopping_stops_a_run(make_config, tmp_path):
    # min_delta 1.0 on an accuracy: no epoch can improve, so patience 1 stops after 2 epochs.
    overrides = ["train.epochs=6", "train.early_stopping.patience=1"]
    overrides += ["train.early_stopping.min_delta=1"]
    dmrnet.train(make_config(), tmp_path / "run", overrides=overrides)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 2/6" in log and "epoch 3/6" not in log


def test_tensorboard_without_the_package_is_a_clear_error(make_config, tmp_path, monkeypatch):
    import dmrnet.engine

    monkeypatch.setattr(dmrnet.engine, "find_spec", lambda name: None)
    config = as_config(make_config(), ["train.loggers=[csv, tensorboard]"])
    with pytest.raises(ConfigError, match=r"pip install 'dmrnet\[tensorboard\]'"):
        build_trainer(config, tmp_path, steps_per_epoch=5)


def test_train_log_has_one_line_per_epoch_and_warns_when_hcr_never_starts(make_config, tmp_path):
    config = make_config()
    config["model"]["hcr"]["warmup_epochs"] = 1
    dmrnet.train(config, tmp_path / "on", overrides=["train.epochs=2"])
    lines = (tmp_path / "on" / "train.log").read_text().splitlines()
    epochs = [line for line in lines if " epoch " in line and "/2: train loss" in line]
    assert len(epochs) == 2
    assert "| val mean " in epochs[0] and " worst " in epochs[0] and "kl " in epochs[0]
    # The rule picks at the end of the first epoch, after that epoch's line.
    assert epochs[0].endswith("| hard: none yet") and re.search(r"\| hard: [abc]$", epochs[1])
    assert "never switch on" not in "\n".join(lines)

    dmrnet.train(make_config(), tmp_path / "off", overrides=["model.hcr.warmup_epochs=2"])
    warning = (tmp_path / "off" / "train.log").read_text()
    assert "model.hcr.warmup_epochs=2 >= 2 epochs of training" in warning
