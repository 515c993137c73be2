"""Runs you can trust: exact resume, extension, one writer, signals, the non-finite guard,
verified checkpoints, non-destructive evaluation and atomic files (docs/runs.md)."""

import csv
import json
import logging
import os
import shutil
import signal
import socket

import pytest
import torch
import yaml

from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.engine import LitMethod
from dmrnet.errors import CheckpointError, DmrnetError, NonFiniteError
from dmrnet.files import LOCK_NAME, RunLock, atomic_write
from dmrnet.runs import evaluate_run, load_checkpoint, train


class Stop(Exception):
    pass


def weights(run_dir, name="last.ckpt"):
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["state_dict"]


def assert_same_run(a, b):
    assert stable_results(a) == stable_results(b)
    for name in ("last.ckpt", "best.ckpt"):
        wa, wb = weights(a, name), weights(b, name)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def stop_at(monkeypatch, epoch, step, action=None):
    original = LitMethod.training_step

    def step_or_stop(self, batch, batch_idx):
        if self.current_epoch == epoch and batch_idx == step:
            if action is None:
                raise Stop
            action()
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LitMethod, "training_step", step_or_stop)
    return original


def val_epochs(run_dir):
    with (run_dir / "logs" / "metrics.csv").open() as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle) if r.get("val/mean")]


@pytest.mark.parametrize("epoch", [0, 1])
def test_an_interrupted_run_resumes_bit_identical(trained_run, tmp_path, monkeypatch, epoch):
    reference, raw = trained_run
    run_dir = tmp_path / "run"
    original = stop_at(monkeypatch, epoch, 2)
    with pytest.raises(Stop):
        train(parse_config(raw), run_dir)
    assert not (run_dir / "results.json").exists()
    monkeypatch.setattr(LitMethod, "training_step", original)
    train(parse_config(raw), run_dir, resume=True)
    assert_same_run(reference, run_dir)
    # The interrupted epoch's rows were dropped: every epoch is logged once.
    assert val_epochs(run_dir) == [0, 1]
    assert not (run_dir / "logs" / "metrics.before-resume.csv").exists()


def test_resuming_a_finished_run_changes_nothing(trained_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    caplog.set_level(logging.INFO, logger="dmrnet")  # a bench test may have raised it
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert "is finished (2 epochs, results.json written): nothing to do" in caplog.text
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def _log_text(run_dir):
    return (run_dir / "train.log").read_text()


def test_resume_with_more_epochs_extends_the_run(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=3"]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 3
    assert val_epochs(run_dir) == [0, 1, 2]


def test_resume_refuses_keys_that_would_change_the_trained_epochs(trained_run, capsys):
    code = main(["train", "--resume", str(trained_run[0]), "--set", "model.kl_weight=0.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--set model.kl_weight: cannot change when resuming" in err and "train.epochs" in err


def test_a_second_writer_is_refused_before_it_writes(tmp_path, make_config):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = RunLock(run_dir).acquire()
    with pytest.raises(DmrnetError, match=rf"in use by another dmrnet process \(pid {os.getpid()}"):
        train(parse_config(make_config("moddrop")), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
    lock.release()
    assert not (run_dir / LOCK_NAME).exists()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path):
    # A lock of a process that no longer runs (pid 2**22 + 1 is beyond Linux's pid range).
    stale = {"pid": 2**22 + 1, "host": socket.gethostname(), "started": 0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    lock = RunLock(tmp_path).acquire()
    assert "took over the stale lock" in lock.describe_stale()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    # Another host's lock cannot be checked from here: it is never taken over.
    lock.release()
    (tmp_path / LOCK_NAME).write_text(json.dumps({**stale, "host": "elsewhere"}))
    with pytest.raises(DmrnetError, match="on elsewhere"):
        RunLock(tmp_path).acquire()


def test_sigint_stops_at_a_batch_boundary_and_prints_the_resume_command(
    trained_run, tmp_path, monkeypatch, capsys
):
    # SIGTERM (and SIGKILL) of a real process: tests/test_kill_resume.py.
    signum = signal.SIGINT
    reference, raw = trained_run
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    original = stop_at(monkeypatch, 1, 1, lambda: os.kill(os.getpid(), signum))
    # What the process had before (SIG_IGN under nohup or a background job, else Python's).
    before = signal.getsignal(signal.SIGINT)
    code = main(["train", str(config), "--run-dir", str(run_dir)])
    assert code == 128 + signum
    err = capsys.readouterr().err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert f"resume with: dmrnet train --resume {run_dir}\n" in err
    assert signal.getsignal(signal.SIGINT) == before  # the guard restored the handler
    monkeypatch.setattr(LitMethod, "training_step", original)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert_same_run(reference, run_dir)


def test_a_non_finite_loss_stops_naming_epoch_and_step(make_config, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(make_config("dmrnet")))
    run_dir = tmp_path / "run"
    code = main(["train", str(config), "--run-dir", str(run_dir), "--set", "model.kl_weight=.inf"])
    assert code == 2
    err = capsys.readouterr().err
    assert "the training loss is inf in epoch 0, step 0" in err and "last.ckpt keeps" in err
    assert not (run_dir / "results.json").exists()
    # The last good state (before the first epoch) is kept and loads.
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt").method is not None


def test_a_non_finite_gradient_stops_naming_epoch_and_step(make_config, tmp_path, monkeypatch):
    original = LitMethod.training_step

    def nan_gradient(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * torch.tensor(float("nan")) if self.current_epoch == 1 else loss

    # A NaN factor outside the guarded loss: only the gradient check can catch it.
    monkeypatch.setattr(LitMethod, "training_step", nan_gradient)
    with pytest.raises(NonFiniteError, match=r"a gradient is NaN or infinite in epoch 1, step 0"):
        train(parse_config(make_config("moddrop")), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] == 0 and all(
        torch.isfinite(v).all() for k, v in state["state_dict"].items() if k.endswith(".weight")
    )


def test_checkpoints_are_verified_by_sha256_and_refused_with_non_finite_weights(
    trained_run, tmp_path
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    best = run_dir / "checkpoints" / "best.ckpt"
    assert (run_dir / "checkpoints" / "best.ckpt.sha256").read_text().endswith("  best.ckpt\n")
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"best.ckpt: sha256 .* does not match"):
        load_checkpoint(run_dir)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.endswith(".weight"))
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=rf"weight '{name[len('method.') :]}' holds NaN"):
        load_checkpoint(tmp_path / "nan.ckpt")


def test_evaluate_writes_beside_the_run_results_never_over_them(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0], run_dir)
    results = (run_dir / "results.json").read_bytes()
    assert main(["evaluate", str(run_dir), "--combinations", "a", "b+c"]) == 0
    out = run_dir / "evaluations" / "test-best-a_b+c"
    assert f"results written to {out}/results.json" in capsys.readouterr().out
    assert len(stable_results(out)["combinations"]) == 2
    _, last = evaluate_run(run_dir / "checkpoints" / "last.ckpt", split="val")
    assert last == run_dir / "evaluations" / "val-last"
    assert (run_dir / "results.json").read_bytes() == results


def test_an_atomic_write_that_fails_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(Stop), atomic_write(path) as handle:
        handle.write("half")
        raise Stop
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_kill_between_a_checkpoint_and_its_record_still_verifies(tmp_path):
    from dmrnet.files import sha256_of, verify_checksum, write_with_checksum

    path = tmp_path / "last.ckpt"
    write_with_checksum(path, b"epoch 1")
    record = tmp_path / "last.ckpt.sha256"
    # The first phase of the next write: the record lists both digests, the file is still old.
    record.write_text(f"{sha256_of(b'epoch 2')}  last.ckpt\n" + record.read_text())
    verify_checksum(path, path.read_bytes())
    write_with_checksum(path, b"epoch 2")
    assert record.read_text() == f"{sha256_of(b'epoch 2')}  last.ckpt\n"
    with pytest.raises(CheckpointError, match="does not match"):
        verify_checksum(path, b"epoch 1")


def stable_results(run_dir):
    """results.json without the calibration's wall time (`calibration.seconds`), the one value
    of it that no rerun can reproduce."""
    results = json.loads((run_dir / "results.json").read_text())
    results.get("calibration", {}).pop("seconds", None)
    return results
