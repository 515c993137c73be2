"""CREMA-D (Cao et al., 2014): 7442 clips of 91 actors speaking with one of six emotions.

Read in the layout of the paper's audio-visual code (DMRNet, after OGM-GE), which users build
from the public release (docs/datasets.md says how):

    <path>/
      train.csv, test.csv          rows "<clip>,<emotion>", e.g. "1001_DFA_ANG_XX,ANG" (no header
                                   needed; a header row is skipped)
      AudioWAV/<clip>.wav          the release's audio (16 kHz mono; resampled to 22.05 kHz)
      Image-01-FPS/<clip>/*.jpg    frames extracted at `fps` frames per second

Classes in the paper's order: NEU, HAP, SAD, FEA, DIS, ANG. The audio front-end defaults are the
paper's (3 s at 22.05 kHz, tiled, n_fft 512, hop 353, log |STFT|, per-sample standardization);
the visual ones too (224 x 224, random resized crop and flip in training, ImageNet scaling).
Validation rows are `val_fraction` of train.csv, stratified by emotion and seeded by the run
seed; the paper's code selects its checkpoint on the test split instead.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dmrnet.data.audiovisual import (
    MODALITIES,
    AudioVisualClips,
    BadClipPolicy,
    Clip,
    FrameOptions,
    check_clips,
    imagenet_stats,
    resolve_root,
    visual_shape,
)
from dmrnet.data.base import DataSpec, DataSplits, register_dataset, stratified_split
from dmrnet.data.store import DataStore
from dmrnet.errors import DataError
from dmrnet.spectrograms import AudioOptions

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # the paper's class_dict order


class CremaDAudioOptions(AudioOptions):
    """The paper's CREMA-D audio settings (AudioOptions' defaults) with per-sample
    standardization on, as its CramedDataset does."""

    standardize: bool = True


class CremaDOptions(BaseModel):
    """`data.options` for cremad."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(Path("CREMA-D"), description="dataset folder (relative: cwd, then mirror)")
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    audio_folder: str = "AudioWAV"
    fps: int = Field(1, ge=1, description="frame folder Image-{fps:02d}-FPS")
    audio: CremaDAudioOptions = Field(default_factory=CremaDAudioOptions)
    visual: FrameOptions = Field(default_factory=FrameOptions)
    bad_clips: BadClipPolicy = Field("error", description="error: stop; skip: leave them out")


def read_clip_list(path: Path, root: Path, options: CremaDOptions) -> list[Clip]:
    """Rows "<clip>,<emotion>" of a split file (a header row is allowed)."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found (data.options.train_csv / test_csv)")
    clips = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not any(cells):
                continue
            if len(cells) < 2:
                raise DataError(f"{path}: line {number}: expected '<clip>,<emotion>', got {row}")
            name, emotion = cells[0], cells[1].upper()
            if emotion not in EMOTIONS:
                if number == 1:
                    continue  # a header row
                raise DataError(
                    f"{path}: line {number}: emotion {cells[1]!r} is not one of "
                    f"{', '.join(EMOTIONS)}"
                )
            clips.append(
                Clip(
                    name=name,
                    audio=root / options.audio_folder / f"{name}.wav",
                    frames=root / f"Image-{options.fps:02d}-FPS" / name,
                    label=EMOTIONS.index(emotion),
                )
            )
    if not clips:
        raise DataError(f"{path}: no clips listed")
    return clips


@register_dataset(
    "cremad",
    options=CremaDOptions,
    description="CREMA-D audio-visual emotions (6 classes), the paper's layout; bring your own",
)
def build(options: CremaDOptions, store: DataStore, val_fraction: float, seed: int) -> DataSplits:
    root = resolve_root(options.path, store, "CREMA-D")
    parts = {}
    for split, file_name in (("train", options.train_csv), ("test", options.test_csv)):
        clips = read_clip_list(root / file_name, root, options)
        checked, frames = check_clips(clips, options.audio, options.visual, options.bad_clips)
        parts[split] = AudioVisualClips(checked, frames, options.audio, options.visual, train=False)
    train_all = parts["train"]
    keep, held = stratified_split(train_all.targets, val_fraction, seed)
    spec = DataSpec(
        name="cremad",
        modalities=MODALITIES,
        input_shapes={
            "audio": options.audio.spectrogram_shape(),
            "visual": visual_shape(options.visual),
        },
        task="classification",
        num_classes=len(EMOTIONS),
        class_names=EMOTIONS,
        input_stats={"visual": imagenet_stats()},
        extra={"path": str(root)},
    )
    return DataSplits(
        spec=spec,
        train=train_all.subset(keep, train=True),
        val=train_all.subset(held, train=False),
        test=parts["test"],
    )
