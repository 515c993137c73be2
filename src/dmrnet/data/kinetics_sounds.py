"""Kinetics-Sounds (Arandjelovic & Zisserman, 2017): Kinetics clips of classes that can be heard.

Read in the layout of the paper's audio-visual code (its KSDataset), which users build from their
Kinetics download (docs/datasets.md says how):

    <path>/
      class.txt                                    optional: the class names, comma-separated
      audio/train/<class>/<clip>.wav               audio/test/<class>/<clip>.wav
      visual/train_img/Image-01-FPS/<class>/<clip>/*.jpg
      visual/val_img/Image-01-FPS/<class>/<clip>/*.jpg   (the test clips: Kinetics' validation)
      train.txt, test.txt                          optional clip lists, one "<class>/<clip>" a line

Classes: the names of class.txt in its order (spaces become underscores, as the paper's code does
it), else the sorted class folders of the training audio. Clips: the lists when given, else every
clip that has an audio file or a frame folder; a clip missing either is a bad clip. The paper's
code pairs audio and frames by sorted position within a class; dmrnet pairs them by name.

Audio defaults are the paper's (16 kHz mono, 5 s crop, shorter clips tiled, n_fft 256, hop 128,
log |STFT|, no standardization); frames: one 224 x 224 frame per clip (`--use_video_frames 1` of
the paper's ks.sh). Validation: `val_fraction` of the training clips, stratified and seeded.
"""

from __future__ import annotations

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

# Where each split lives under the dataset folder: (audio folder, frame folder).
SPLIT_FOLDERS = {
    "train": ("audio/train", "visual/train_img"),
    "test": ("audio/test", "visual/val_img"),
}


class KineticsSoundsAudioOptions(AudioOptions):
    """The paper's Kinetics-Sounds audio settings."""

    sample_rate: int = Field(16000, gt=0)
    seconds: float = Field(5.0, gt=0.0)
    n_fft: int = Field(256, ge=8)
    hop_length: int = Field(128, ge=1)


class KineticsSoundsOptions(BaseModel):
    """`data.options` for kinetics-sounds."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(Path("kinetics_sounds"), description="dataset folder (cwd, then mirror)")
    train_list: str | None = Field(None, description="clip list; default train.txt if present")
    test_list: str | None = Field(None, description="clip list; default test.txt if present")
    fps: int = Field(1, ge=1, description="frame folder Image-{fps:02d}-FPS")
    audio: KineticsSoundsAudioOptions = Field(default_factory=KineticsSoundsAudioOptions)
    visual: FrameOptions = Field(default_factory=FrameOptions)
    bad_clips: BadClipPolicy = Field("error", description="error: stop; skip: leave them out")


def read_class_names(root: Path) -> list[str]:
    """class.txt (the paper's one comma-separated line; one name per line works too), else the
    sorted class folders of audio/train."""
    class_file = root / "class.txt"
    if class_file.is_file():
        text = class_file.read_text(encoding="utf-8-sig")
        names = ["_".join(part.split()) for part in text.replace("\n", ",").split(",")]
        names = [name for name in names if name]
        if len(set(names)) != len(names):
            raise DataError(f"{class_file}: a class is listed twice")
        if names:
            return names
    folder = root / SPLIT_FOLDERS["train"][0]
    if not folder.is_dir():
        raise DataError(f"{root}: neither class.txt nor an {SPLIT_FOLDERS['train'][0]} folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders")
    return names


def list_clips(
    root: Path, split: str, classes: list[str], options: KineticsSoundsOptions
) -> list[Clip]:
    """The clips of one split, from its clip list or from its folders."""
    audio_root = root / SPLIT_FOLDERS[split][0]
    frame_root = root / SPLIT_FOLDERS[split][1] / f"Image-{options.fps:02d}-FPS"
    list_name = options.train_list if split == "train" else options.test_list
    list_path = root / (list_name or f"{split}.txt")
    if list_name is not None and not list_path.is_file():
        raise DataError(f"{list_path}: clip list not found (data.options.{split}_list)")
    entries: list[tuple[str, str]] = []
    if list_path.is_file():
        for number, line in enumerate(list_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            class_name, slash, clip = line.strip().partition("/")
            if not slash or not clip or class_name not in classes:
                raise DataError(
                    f"{list_path}: line {number}: expected '<class>/<clip>' with a class of "
                    f"class.txt, got {line.strip()!r}"
                )
            entries.append((class_name, clip.removesuffix(".wav")))
    else:
        for class_name in classes:
            names = set()
            if (audio_root / class_name).is_dir():
                names |= {p.stem for p in (audio_root / class_name).glob("*.wav")}
            if (frame_root / class_name).is_dir():
                names |= {p.name for p in (frame_root / class_name).iterdir() if p.is_dir()}
            entries += [(class_name, name) for name in sorted(names)]
    if not entries:
        raise DataError(f"{root}: no {split} clips found under {audio_root} or {frame_root}")
    return [
        Clip(
            name=f"{class_name}/{clip}",
            audio=audio_root / class_name / f"{clip}.wav",
            frames=frame_root / class_name / clip,
            label=classes.index(class_name),
        )
        for class_name, clip in entries
    ]


@register_dataset(
    "kinetics-sounds",
    options=KineticsSoundsOptions,
    description="Kinetics-Sounds audio-visual actions, the paper's layout; bring your own",
)
def build(
    options: KineticsSoundsOptions, store: DataStore, val_fraction: float, seed: int
) -> DataSplits:
    root = resolve_root(options.path, store, "Kinetics-Sounds")
    classes = read_class_names(root)
    parts = {}
    for split in ("train", "test"):
        clips = list_clips(root, split, classes, options)
        checked, frames = check_clips(clips, options.audio, options.visual, options.bad_clips)
        parts[split] = AudioVisualClips(checked, frames, options.audio, options.visual, train=False)
    train_all = parts["train"]
    keep, held = stratified_split(train_all.targets, val_fraction, seed)
    spec = DataSpec(
        name="kinetics-sounds",
        modalities=MODALITIES,
        input_shapes={
            "audio": options.audio.spectrogram_shape(),
            "visual": visual_shape(options.visual),
        },
        task="classification",
        num_classes=len(classes),
        class_names=tuple(classes),
        input_stats={"visual": imagenet_stats()},
        extra={"path": str(root)},
    )
    return DataSplits(
        spec=spec,
        train=train_all.subset(keep, train=True),
        val=train_all.subset(held, train=False),
        test=parts["test"],
    )
