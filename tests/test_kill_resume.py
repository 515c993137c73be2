"""The kill test: a real `dmrnet train` process killed in the middle of an epoch (SIGKILL: no
chance to clean up; SIGTERM: the graceful path), then `--resume`d, ends with results.json and
final weights bit-identical to an uninterrupted run of the same config."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.engine import epochs_done
from dmrnet.runs import train

EPOCHS = 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_files):
    """(config file, uninterrupted run): 4 epochs of 13 small steps each."""
    write_synthetic_views, tiny_config = tiny_files
    base = tmp_path_factory.mktemp("kill")
    raw = tiny_config(write_synthetic_views(base / "views.npz", samples=160), "dmrnet")
    raw["train"].update(epochs=EPOCHS, batch_size=8)
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    train(parse_config(raw), base / "reference")
    return config, base / "reference"


def _last_save(run_dir):
    """The digest of the last.ckpt being written: the first line of its sha256 record, which
    lists the new digest above the old one while the file is replaced (write_with_checksum), so
    one save is seen as one change."""
    path = run_dir / "checkpoints" / "last.ckpt.sha256"
    text = path.read_text() if path.is_file() else ""
    return text.split()[0] if text.strip() else None


def kill_mid_epoch(config, run_dir, signum):
    """Start training, wait for the second epoch's end, then send `signum` about 40% into the
    third epoch, timed from the second: the first one also pays for one-time costs (the HCR's
    warm-up statistics, first calls), so timing from it could let the run finish, and a fourth
    epoch leaves room for a loaded machine. Returns the exit code and standard error."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dmrnet.cli", "train", str(config), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, times = None, []
    deadline = time.monotonic() + 240
    while len(times) < 3 and process.poll() is None and time.monotonic() < deadline:
        current = _last_save(run_dir)  # last.ckpt: before epoch 0, then after each epoch
        if current is not None and current != seen:
            seen = current
            times.append(time.monotonic())
        time.sleep(0.02)
    assert len(times) == 3, "the run did not reach its third epoch"
    time.sleep(0.4 * (times[2] - times[1]))
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def assert_identical(reference, run_dir):
    assert stable_results(run_dir) == stable_results(reference)
    for name in ("last.ckpt", "best.ckpt"):
        ours = torch.load(run_dir / "checkpoints" / name, weights_only=True)["state_dict"]
        theirs = torch.load(reference / "checkpoints" / name, weights_only=True)["state_dict"]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_resumes_bit_identical(reference, tmp_path, signum):
    config, reference_run = reference
    run_dir = tmp_path / "run"
    code, stderr = kill_mid_epoch(config, run_dir, signum)
    assert code == (-9 if signum == signal.SIGKILL else 143), stderr
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # Killed inside the third or fourth epoch (load on the machine decides which).
    assert 2 <= epochs_done(last) < EPOCHS and not (run_dir / "results.json").exists()
    if signum == signal.SIGTERM:
        assert f"resume with: dmrnet train --resume {run_dir}\n" in stderr
        assert not (run_dir / ".lock").exists()
    else:
        assert (run_dir / ".lock").exists()  # left by the dead process: stale, taken over
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert_identical(reference_run, run_dir)
    assert not list(run_dir.rglob("*.tmp"))


def stable_results(run_dir):
    """results.json without the calibration's wall time (`calibration.seconds`), the one value
    of it that no rerun can reproduce."""
    results = json.loads((run_dir / "results.json").read_text())
    results.get("calibration", {}).pop("seconds", None)
    return results
