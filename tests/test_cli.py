import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dmrnet.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--set", "train.epochs=2", "--set", "train.progress_bar=false"]


@pytest.fixture(scope="module")
def handwritten_run(tmp_path_factory):
    mirror = Path(__import__("os").environ.get("DMRNET_DATA", "/nonexistent"))
    if not (mirror / "handwritten" / "handwritten_6views.mat").is_file():
        pytest.skip("set DMRNET_DATA to the data mirror (CI uses ../shared/data)")
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            str(ROOT / "src/dmrnet/configs/handwritten/dmrnet.yaml"),
            "--run-dir",
            str(run_dir),
            *FAST,
        ]
    )
    assert code == 0
    return run_dir


def test_train_evaluates_all_63_combinations_of_handwritten(handwritten_run, capsys):
    result = json.loads((handwritten_run / "results.json").read_text())
    assert result["dataset"] == "handwritten" and result["split"] == "test"
    assert len(result["combinations"]) == 63
    assert result["modalities"] == ["pix", "fou", "fac", "zer", "kar", "mor"]
    assert result["summary"]["full"] > 0.8  # two epochs already learn the full set


def test_evaluate_selected_combinations(handwritten_run, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            str(handwritten_run),
            "--combinations",
            "mor",
            "pix+fou",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert list(result["combinations"]) == ["mor", "pix+fou"]
    assert result["summary"]["full"] is None
    assert "pix+fou" in capsys.readouterr().out


def test_evaluate_rejects_a_combination_that_does_not_exist(handwritten_run, capsys):
    code = main(["evaluate", str(handwritten_run), "--combinations", "pix+rgb"])
    assert code == 2
    assert "unknown modality 'rgb'" in capsys.readouterr().err


def test_predict_from_a_subset_of_modalities(handwritten_run, tmp_path, capsys):
    data = scipy.io.loadmat(
        Path(__import__("os").environ["DMRNET_DATA"]) / "handwritten/handwritten_6views.mat"
    )
    pix = data["x1_test"][:5].astype(float)
    kar = data["x5_test"][:5].copy()
    kar[2] = np.nan  # sample 2 has no kar
    path = tmp_path / "inputs.npz"
    np.savez(path, pix=pix, kar=kar)
    assert main(["predict", str(handwritten_run), str(path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5
    assert rows[0]["modalities"] == "pix+kar" and rows[2]["modalities"] == "pix"
    assert all(r["prediction"] in [str(i) for i in range(10)] for r in rows)
    assert float(rows[0]["embedding_variance"]) > 0
    out = tmp_path / "pred.csv"
    assert main(["predict", str(handwritten_run), str(path), "--out", str(out)]) == 0
    assert out.read_text().startswith("index,prediction")


def test_predict_refuses_inputs_without_modalities(handwritten_run, tmp_path, capsys):
    path = tmp_path / "wrong.npz"
    np.savez(path, rgb=np.zeros((2, 3)))
    assert main(["predict", str(handwritten_run), str(path)]) == 2
    assert "none of its keys ['rgb']" in capsys.readouterr().err


def test_unknown_config_key_exits_2_naming_it_and_creates_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "src/dmrnet/configs/handwritten/moddrop.yaml"),
            "--run-dir",
            str(run_dir),
            "--set",
            "model.kl_weight=0.1",
        ]
    )
    assert code == 2
    assert "model.kl_weight: unknown key" in capsys.readouterr().err
    assert not run_dir.exists()


def test_missing_data_file_offline_says_which_file_and_how_to_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DMRNET_DATA", str(tmp_path / "empty-mirror"))
    monkeypatch.setenv("DMRNET_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("dmrnet.data.store.urlopen", offline)
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            str(ROOT / "src/dmrnet/configs/handwritten/dmrnet.yaml"),
            "--run-dir",
            str(run_dir),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "handwritten/handwritten_6views.mat" in err and "DMRNET_DATA" in err
    assert not run_dir.exists()


def test_datasets_lists_registered_datasets(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "handwritten" in out and "multiview" in out


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["datasets"]])
def test_help_everywhere(command, capsys):
    # In-process: `python -m dmrnet.cli` itself is run by the kill and DDP tests.
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: dmrnet" in capsys.readouterr().out
