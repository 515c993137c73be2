"""CREMA-D in the paper's layout, read from a tiny generated tree: the splits, the front-ends,
every bad-input error (named file, raised before training) and one short training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from av_fixtures import TINY_AUDIO, TINY_VISUAL, cremad_tree, tiny_av_config, write_wav
from PIL import Image

from dmrnet.cli import main
from dmrnet.data import DATASETS, build_data
from dmrnet.data.cremad import EMOTIONS
from dmrnet.errors import ConfigError, DataError


def build(folder: Path, **options):
    merged = {"path": str(folder), "audio": TINY_AUDIO, "visual": TINY_VISUAL, **options}
    return build_data("cremad", merged, None, val_fraction=0.25, seed=0)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return cremad_tree(tmp_path)


def test_cremad_is_registered_as_bring_your_own() -> None:
    entry = DATASETS.get("cremad")
    assert entry.files == ()


def test_splits_classes_and_shapes(tree: Path) -> None:
    splits = build(tree)
    spec = splits.spec
    assert spec.modalities.names == ("audio", "visual")
    assert spec.class_names == EMOTIONS
    assert len(splits.train) + len(splits.val) == 18 and len(splits.test) == 6
    assert torch.bincount(splits.val.targets, minlength=6).tolist() == [1] * 6  # stratified
    assert dict(spec.input_shapes) == {"audio": (33, 63), "visual": (2, 3, 32, 32)}
    sample = splits.test[0]
    assert sample["inputs"]["audio"].shape == (33, 63)
    assert sample["inputs"]["visual"].shape == (2, 3, 32, 32)
    assert (
        0.0
        <= float(sample["inputs"]["visual"].min())
        <= float(sample["inputs"]["visual"].max())
        <= 1
    )
    # The paper's per-sample standardization of the spectrogram is on by default.
    assert abs(float(sample["inputs"]["audio"].mean())) < 1e-4
    mean, std = spec.input_stats["visual"]
    assert mean.shape == (3, 1, 1) and torch.allclose(
        std.flatten(), torch.tensor([0.229, 0.224, 0.225])
    )


def test_evaluation_items_are_deterministic_and_training_items_are_augmented(tree: Path) -> None:
    splits = build(tree)
    first, again = splits.test[2], splits.test[2]
    assert torch.equal(first["inputs"]["visual"], again["inputs"]["visual"])
    torch.manual_seed(0)
    frames = [splits.train[0]["inputs"]["visual"] for _ in range(3)]
    assert not torch.equal(frames[0], frames[1]) or not torch.equal(frames[1], frames[2])


def test_a_header_row_is_skipped(tree: Path) -> None:
    csv = tree / "test.csv"
    csv.write_text("clip,emotion\n" + csv.read_text())
    assert len(build(tree).test) == 6


def test_unknown_emotion_names_the_file_and_line(tree: Path) -> None:
    csv = tree / "train.csv"
    csv.write_text(csv.read_text() + "1999_DFA_XXX_XX,BORED\n")
    with pytest.raises(DataError, match=r"train\.csv: line 19: emotion 'BORED'"):
        build(tree)


def test_missing_frame_folder_of_a_listed_clip_fails_before_training(tree: Path) -> None:
    clip = (tree / "test.csv").read_text().split(",")[0]
    for frame in (tree / "Image-01-FPS" / clip).iterdir():
        frame.unlink()
    (tree / "Image-01-FPS" / clip).rmdir()
    with pytest.raises(DataError, match=rf"clip {clip}: frame folder .*{clip} not found"):
        build(tree)


def test_bad_clips_can_be_skipped(tree: Path) -> None:
    clip = (tree / "train.csv").read_text().split(",")[0]
    (tree / "AudioWAV" / f"{clip}.wav").unlink()
    with pytest.raises(DataError, match=rf"{clip}\.wav not found.*bad_clips: skip"):
        build(tree)
    splits = build(tree, bad_clips="skip")
    assert len(splits.train) + len(splits.val) == 17


def test_empty_and_unreadable_wav_name_the_file(tree: Path) -> None:
    clip = (tree / "train.csv").read_text().split(",")[0]
    wav = tree / "AudioWAV" / f"{clip}.wav"
    soundfile.write(wav, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=rf"{clip}\.wav: empty audio file"):
        build(tree)
    wav.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(DataError, match=rf"{clip}\.wav: cannot read as audio"):
        build(tree)


def test_stereo_is_mixed_or_refused_and_wrong_rate_is_resampled_or_refused(tree: Path) -> None:
    clip = (tree / "train.csv").read_text().split(",")[0]
    write_wav(tree / "AudioWAV" / f"{clip}.wav", 0, 0, channels=2)
    assert len(build(tree).train) > 0  # default: stereo is averaged to mono
    refuse = {**TINY_AUDIO, "channels": "error"}
    with pytest.raises(DataError, match=rf"{clip}\.wav: 2 channels, expected mono"):
        build(tree, audio=refuse)
    strict = {**TINY_AUDIO, "resample": False}
    with pytest.raises(DataError, match=r"\.wav: sample rate 16000 Hz, expected 8000 Hz"):
        build(tree, audio=strict)


def test_frame_of_wrong_mode_or_size_names_the_file(tree: Path) -> None:
    clip = (tree / "test.csv").read_text().split(",")[0]
    frame = sorted((tree / "Image-01-FPS" / clip).iterdir())[0]
    frame.unlink()
    deep = frame.with_suffix(".png")
    Image.fromarray(np.full((40, 40), 30000, dtype=np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")
    with pytest.raises(DataError, match=rf"{deep.name}: image mode 'I.*' is not an 8-bit"):
        build(tree)
    deep.unlink()
    Image.new("RGB", (12, 12)).save(frame)
    with pytest.raises(DataError, match=rf"{frame.name}: frame of 12 x 12 pixels"):
        build(tree)
    Image.new("L", (40, 40)).save(frame)  # grayscale: converted to RGB
    assert build(tree).test[0]["inputs"]["visual"].shape == (2, 3, 32, 32)


def test_too_few_frames_for_the_requested_count(tree: Path) -> None:
    with pytest.raises(DataError, match=r"holds 3 image\(s\), 4 needed"):
        build(tree, visual={**TINY_VISUAL, "frames": 4})


def test_missing_dataset_folder_and_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CREMA-D folder .*nowhere not found"):
        build(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"data\.options\.fps"):
        build(tmp_path, fps=0)


@pytest.mark.slow
def test_one_epoch_end_to_end_through_the_cli(tree: Path, tmp_path: Path) -> None:
    config = tmp_path / "cremad.yaml"
    config.write_text(yaml.safe_dump(tiny_av_config("cremad", tree)))
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run_dir)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "cremad"
    assert set(results["combinations"]) == {"audio", "visual", "audio+visual"}
    assert set(results["variance"]) == {"audio", "visual", "audio+visual"}


def test_paper_configs_parse() -> None:
    from dmrnet.config import load_config

    root = Path(__file__).resolve().parents[2] / "src" / "dmrnet" / "configs" / "cremad"
    for path in sorted(root.glob("*.yaml")):
        config = load_config(path)
        assert config.data.name == "cremad"
        assert config.train.optimizer.name == "sgd" and config.train.scheduler.step_size == 70
