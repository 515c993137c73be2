"""The console of dmrnet commands: Lightning's lines once or not at all, --quiet and --verbose."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from dmrnet.cli import main


@pytest.fixture
def config_file(make_config, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(make_config("dmrnet")))
    return path


def test_train_prints_each_lightning_line_at_most_once_and_no_advertisement(
    config_file, tmp_path, capsys
):
    assert main(["train", str(config_file), "--run-dir", str(tmp_path / "run"), "--verbose"]) == 0
    captured = capsys.readouterr()
    console = captured.out + captured.err
    assert console.count("GPU available") == 1  # Lightning's own handler is gone
    assert "INFO: " not in console and "litlogger" not in console
    assert "LeafSpec" not in console  # the known deprecation warning of the pinned Lightning
    assert logging.getLogger("lightning").handlers == []
    assert f"results written to {tmp_path / 'run'}/results.json" in captured.out
    assert f"model card written to {tmp_path / 'run'}/MODEL_CARD.md" in captured.out


def test_quiet_train_prints_only_where_it_wrote(config_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", str(config_file), "--run-dir", str(run_dir), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"results written to {run_dir}/results.json (.csv, .md, .png)",
        f"model card written to {run_dir}/MODEL_CARD.md",
    ]
    assert "GPU available" not in captured.err and "Epoch" not in captured.err
    assert main(["-q", "evaluate", str(run_dir), "--split", "val"]) == 0
    folder = run_dir / "evaluations" / "val-best"
    printed = capsys.readouterr().out
    assert printed == f"results written to {folder}/results.json (.csv, .md, .png)\n"
    report = folder / "results.json"
    assert json.loads(report.read_text())["split"] == "val"


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        main(["datasets", "--quiet", "--verbose"])
    assert "not allowed with argument" in capsys.readouterr().err
