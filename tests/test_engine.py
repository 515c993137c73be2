import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from dmrnet.config import SchedulerConfig, parse_config
from dmrnet.engine import LitMethod, all_finite, lr_factor
from dmrnet.errors import CheckpointError, ConfigError, DataError
from dmrnet.runs import evaluate_run, load_checkpoint, train


def test_schedules_with_warm_up():
    step = SchedulerConfig(name="step", step_size=3, gamma=0.1)
    assert [lr_factor(e, step, 10) for e in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])
    multi = SchedulerConfig(name="multistep", milestones=[2, 5], gamma=0.5, warmup_epochs=2)
    assert [lr_factor(e, multi, 10) for e in (0, 1, 2, 5)] == pytest.approx([0.1, 0.55, 0.5, 0.25])
    cosine = SchedulerConfig(name="cosine")
    assert lr_factor(0, cosine, 10) == 1.0 and lr_factor(5, cosine, 10) == pytest.approx(0.5)
    assert lr_factor(7, SchedulerConfig(name="none"), 10) == 1.0


def test_all_finite_finds_one_bad_element_and_is_not_fooled_by_an_overflowing_sum():
    tensors = [torch.randn(64, 32), torch.randn(32), torch.randn(3, 3, 8, 8, dtype=torch.float64)]
    assert all_finite(tensors)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index in range(len(tensors)):
            broken = [t.clone() for t in tensors]
            broken[index].view(-1)[5] = bad
            assert not all_finite(broken)
    # Every element finite, but their float32 sum overflows: still finite.
    huge = torch.full((4,), 3e38)
    assert not bool(huge.sum().isfinite()) and all_finite([*tensors, huge])
    # +inf and -inf in one tensor sum to NaN: still caught.
    both = torch.tensor([float("inf"), -float("inf"), 1.0])
    assert not all_finite([both])


def metrics_rows(run_dir):
    with (run_dir / "logs" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_train_writes_a_complete_run_directory(make_config, tmp_path):
    run_dir = tmp_path / "run"
    report = train(parse_config(make_config("dmrnet")), run_dir)
    for name in (
        "config.yaml",
        "train.log",
        "results.json",
        "results.csv",
        "results.md",
        "results.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["model"]["kl_weight"] == 0.001  # resolved defaults are written out
    rows = metrics_rows(run_dir)
    assert any(r.get("val/mean") for r in rows)
    assert any(r.get("hcr/variance/a") for r in rows) and any(r.get("hcr/loss/b+c") for r in rows)
    assert "hard combinations" in (run_dir / "train.log").read_text()
    result = json.loads((run_dir / "results.json").read_text())
    assert result["summary"]["mean"] == pytest.approx(report.summary()["mean"])


def test_checkpoints_load_with_weights_only_and_reproduce_the_report(make_config, tmp_path):
    run_dir = tmp_path / "run"
    report = train(parse_config(make_config("moddrop")), run_dir)
    raw = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert raw["dmrnet"]["spec"]["modalities"] == ["a", "b", "c"]
    loaded = load_checkpoint(run_dir)
    assert loaded.checkpoint.name == "best.ckpt" and not loaded.method.training
    again, _ = evaluate_run(run_dir, out_dir=tmp_path / "again")
    assert again.values() == report.values()


class Interrupt(Exception):
    pass


def test_a_killed_run_keeps_its_last_checkpoint_and_resumes(make_config, tmp_path, monkeypatch):
    config = parse_config(make_config("dmrnet", hcr={"rule": "loss-topk", "warmup_epochs": 1}))
    run_dir = tmp_path / "run"
    original = LitMethod.training_step

    def dies_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise Interrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LitMethod, "training_step", dies_in_epoch_two)
    with pytest.raises(Interrupt):
        train(config, run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "results.json").exists()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0
    monkeypatch.setattr(LitMethod, "training_step", original)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, run_dir)
    report = train(config, run_dir, resume=True)
    assert report is not None
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] >= 1
    # The HCR selection made at the end of the warm-up (epoch 0) survived the restart.
    assert state["state_dict"]["method.hcr.hard"].any()
    epochs = {int(r["epoch"]) for r in metrics_rows(run_dir) if r.get("val/mean")}
    assert epochs == {0, 1}


def test_resume_without_a_checkpoint_is_an_error(tmp_path, make_config):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(parse_config(make_config()), tmp_path / "nothing", resume=True)


def test_bad_data_fails_before_the_run_directory_is_created(tmp_path):
    values = np.random.default_rng(0).normal(size=(40, 4))
    values[7, 2] = np.nan
    path = tmp_path / "bad.npz"
    np.savez(path, a=values, b=values[:, :2], y=np.arange(40) % 2)
    raw = {
        "data": {"name": "multiview", "options": {"path": str(path)}},
        "model": {"method": "moddrop"},
        "train": {"epochs": 1, "progress_bar": False},
    }
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"bad.npz.*'a'.*NaN"):
        train(parse_config(raw), run_dir)
    assert not run_dir.exists()


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.ckpt: not a loadable"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a dmrnet checkpoint"):
        load_checkpoint(foreign)


class Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    torch.save({"dmrnet": Payload()}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(evil)
    assert "pwned" not in capsys.readouterr().out


def test_loading_and_evaluating_a_run_never_imports_lightning(trained_run, tmp_path):
    # The DataLoader lives in dmrnet.data.loaders: evaluate and predict stay light to start.
    code = (
        "import sys; from dmrnet.runs import evaluate_run; "
        f"evaluate_run({str(trained_run[0])!r}, out_dir={str(tmp_path / 'out')!r}); "
        "assert 'lightning' not in sys.modules, 'lightning was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "results.json").is_file()
