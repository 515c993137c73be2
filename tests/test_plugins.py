"""Plugins: --import, the `dmrnet.plugins` entry-point group, and runs that record the plugin
modules they need, so evaluate and predict work in a fresh process (and fail clearly without)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dmrnet
from dmrnet import plugins
from dmrnet.cli import main
from dmrnet.config import parse_config
from dmrnet.nn import ENCODERS
from dmrnet.plugins import PluginError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugin"


def fresh_process(commands: list[list[str]], pythonpath: list[Path]) -> subprocess.CompletedProcess:
    """Run dmrnet COMMANDS in turn in one fresh interpreter that can import exactly
    `pythonpath`; its exit status is the first non-zero one."""
    calls = " or ".join(f"main({command!r})" for command in commands)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", f"import sys; from dmrnet.cli import main; sys.exit({calls})"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_plugin_encoder_round_trips_through_train_evaluate_and_predict(
    make_config, synthetic_file, tmp_path, monkeypatch
):
    # Train in this process with the example plugin encoder (`--import tiny_attention`).
    config = make_config()
    config["model"]["encoder"] = {"name": "tiny-attn", "options": {"token_size": 4, "width": 8}}
    config["train"]["epochs"] = 1
    path = tmp_path / "tiny-attn.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    monkeypatch.syspath_prepend(str(EXAMPLE))
    assert main(["train", str(path), "--run-dir", str(run_dir), "--import", "tiny_attention"]) == 0

    # The run records the plugin module it needs, in config.yaml and in the checkpoint.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["plugins"] == ["tiny_attention"]
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["dmrnet"]["config"]["plugins"] == ["tiny_attention"]

    # A fresh process evaluates and predicts without --import: the recorded plugin is imported
    # because it is installed (here: on the path).
    with np.load(synthetic_file) as views:
        np.savez(tmp_path / "inputs.npz", a=views["a"][:5], c=views["c"][:5])
    predictions = tmp_path / "predictions.csv"
    result = fresh_process(
        [
            ["evaluate", str(run_dir), "--out", str(tmp_path / "eval")],
            ["predict", str(run_dir), str(tmp_path / "inputs.npz"), "--out", str(predictions)],
        ],
        [ROOT / "src", EXAMPLE],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "eval" / "results.json").is_file()
    rows = predictions.read_text().strip().splitlines()
    assert rows[0].startswith("index,prediction") and len(rows) == 6
    assert rows[1].endswith(",a+c")

    # Where the plugin is not installed, loading the run exits 2 and names the module.
    missing = fresh_process([["evaluate", str(run_dir)]], [ROOT / "src"])
    assert missing.returncode == 2
    assert "needs plugin module 'tiny_attention'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_import_of_a_missing_module_is_a_one_line_error(capsys):
    assert main(["datasets", "--import", "no_such_dmrnet_plugin"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: cannot import plugin module 'no_such_dmrnet_plugin'")
    assert "\n" not in error
    with pytest.raises(PluginError, match="no_such_dmrnet_plugin"):
        dmrnet.load("runs/none", imports=["no_such_dmrnet_plugin"])


def test_a_config_can_name_its_plugins(make_config):
    raw = make_config()
    raw["plugins"] = ["no_such_dmrnet_plugin"]
    with pytest.raises(PluginError, match=r"my\.yaml needs plugin module 'no_such_dmrnet_plugin'"):
        parse_config(raw, source="my.yaml")


def write_distribution(folder: Path, module: str, value: str) -> None:
    """An installed distribution (dist-info on sys.path) declaring a `dmrnet.plugins` entry."""
    info = folder / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[dmrnet.plugins]\n{module} = {value}\n")


def test_entry_point_plugins_are_imported_by_every_config_parse(tmp_path, monkeypatch, make_config):
    (tmp_path / "ep_plugin_encoder.py").write_text(
        "from dmrnet.nn import ENCODERS\n"
        "from dmrnet.nn.encoders import build_mlp\n"
        "@ENCODERS.register('ep-mlp')\n"
        "def build(input_shape, out_features, **options):\n"
        "    return build_mlp(input_shape, out_features, **options)\n"
    )
    write_distribution(tmp_path, "ep_plugin_encoder", "ep_plugin_encoder")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    raw = make_config()
    raw["model"]["encoder"]["name"] = "ep-mlp"
    config = parse_config(raw)
    assert "ep-mlp" in ENCODERS
    # Entry-point plugins are recorded too: a process without the package could not rebuild it.
    assert plugins.required_plugins(config) == ["ep_plugin_encoder"]


def test_a_broken_entry_point_plugin_is_named(tmp_path, monkeypatch, make_config):
    write_distribution(tmp_path, "ep_broken", "ep_broken_missing_module")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    with pytest.raises(PluginError, match=r"plugin 'ep_broken' \(ep_broken_missing_module"):
        parse_config(make_config())
