"""Kinetics-Sounds in the paper's layout, read from a tiny generated tree: classes, clip discovery
and clip lists, bad-input errors, and one short training run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from av_fixtures import KS_CLASSES, TINY_AUDIO, TINY_VISUAL, kinetics_sounds_tree, tiny_av_config

from dmrnet.cli import main
from dmrnet.data import build_data
from dmrnet.errors import DataError


def build(folder: Path, **options):
    merged = {"path": str(folder), "audio": TINY_AUDIO, "visual": TINY_VISUAL, **options}
    return build_data("kinetics-sounds", merged, None, val_fraction=0.25, seed=0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return kinetics_sounds_tree(tmp_path)


def test_classes_come_from_class_txt_with_underscores(tree: Path) -> None:
    splits = build(tree)
    assert splits.spec.class_names == tuple(name.replace(" ", "_") for name in KS_CLASSES)
    assert len(splits.train) + len(splits.val) == 12 and len(splits.test) == 6
    assert torch.bincount(splits.test.targets).tolist() == [2, 2, 2]
    assert dict(splits.spec.input_shapes) == {"audio": (33, 63), "visual": (2, 3, 32, 32)}


def test_without_class_txt_classes_are_the_sorted_folders(tree: Path) -> None:
    (tree / "class.txt").unlink()
    assert build(tree).spec.class_names == ("blowing_nose", "bowling", "playing_drums")


def test_audio_and_frames_are_paired_by_clip_name(tree: Path) -> None:
    splits = build(tree)
    for clip in splits.test.clips:
        assert clip.audio.stem == clip.frames.name
        assert clip.audio.parent.name == clip.frames.parent.name


def test_audio_without_frames_is_a_bad_clip(tree: Path) -> None:
    frames = tree / "visual" / "val_img" / "Image-01-FPS" / "bowling" / "clip0014"
    shutil.rmtree(frames)
    with pytest.raises(DataError, match=r"clip bowling/clip0014: frame folder .* not found"):
        build(tree)
    assert len(build(tree, bad_clips="skip").test) == 5


def test_clip_lists_select_clips_and_a_listed_clip_without_frames_fails(tree: Path) -> None:
    (tree / "test.txt").write_text("bowling/clip0014\nplaying_drums/clip0016\n")
    splits = build(tree)
    assert [clip.name for clip in splits.test.clips] == [
        "bowling/clip0014",
        "playing_drums/clip0016",
    ]
    (tree / "test.txt").write_text("bowling/clip9999\n")
    with pytest.raises(
        DataError, match=r"clip bowling/clip9999: audio file .*clip9999\.wav not found"
    ):
        build(tree)
    (tree / "test.txt").write_text("juggling/clip0001\n")
    with pytest.raises(DataError, match=r"test\.txt: line 1: expected '<class>/<clip>'"):
        build(tree)


def test_given_clip_list_must_exist(tree: Path) -> None:
    with pytest.raises(
        DataError, match=r"mine\.txt: clip list not found \(data\.options\.train_list\)"
    ):
        build(tree, train_list="mine.txt")


@pytest.mark.slow
def test_one_epoch_end_to_end_through_the_cli(tree: Path, tmp_path: Path) -> None:
    config = tmp_path / "ks.yaml"
    raw = tiny_av_config("kinetics-sounds", tree)
    raw["model"]["method"] = "moddrop"
    raw["model"]["hcr"] = {"rule": "loss-topk", "warmup_epochs": 1}
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "kinetics-sounds"
    assert results["samples"] == {"audio": 6, "visual": 6, "audio+visual": 6}


def test_paper_configs_parse() -> None:
    from dmrnet.config import load_config

    root = Path(__file__).resolve().parents[2] / "src" / "dmrnet" / "configs" / "kinetics_sounds"
    paths = sorted(root.glob("*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        config = load_config(path)
        assert config.data.name == "kinetics-sounds"
        assert config.data.options["audio"]["sample_rate"] == 16000
    assert load_config(root / "dmrnet.yaml").model.hcr.weight == 0.3
