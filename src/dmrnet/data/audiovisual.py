"""Audio-visual clip datasets read from disk: a wav file and a folder of extracted frames per clip.

Shared by the paper's audio-visual datasets (`cremad`, `kinetics_sounds`): their modules find the
clips in the published layouts; this module checks every clip before training (the audio header,
the frame folder, each frame's mode and size) and loads a clip as

    {"audio": (F, T) log-spectrogram, "visual": (frames, 3, size, size) RGB in [0, 1]}

The visual front-end follows the paper's code (torchvision there, Pillow here): training frames get
a random resized crop (scale 0.08-1, aspect 3/4-4/3) and a random horizontal flip, evaluation
frames are resized to size x size; ImageNet mean/std standardization is done by the model from the
dataset's `input_stats`. Frames: `frames` distinct frames of the folder, drawn at random (sorted)
in training and evenly spaced at evaluation (the paper's code always takes the first ones).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from dmrnet.data.base import Sample
from dmrnet.data.store import DataStore
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet
from dmrnet.spectrograms import AudioOptions, check_wav, load_spectrogram

log = logging.getLogger("dmrnet")

MODALITIES = ModalitySet(("audio", "visual"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# 8-bit modes Pillow converts to RGB without guessing a scale; 16-bit and float frames are refused.
CONVERTIBLE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BadClipPolicy = Literal["error", "skip"]


class FrameOptions(BaseModel):
    """The visual front-end (part of a dataset's `data.options`)."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(1, ge=1, description="frames per clip (the paper's --fps / frames)")
    image_size: int = Field(224, ge=8, description="frames are resized or cropped to this square")
    min_frame_size: int = Field(32, ge=1, description="smaller frames are refused")
    augment: bool = Field(True, description="training: random resized crop and horizontal flip")


@dataclass(frozen=True)
class Clip:
    name: str
    audio: Path
    frames: Path  # folder of extracted frames
    label: int


def resolve_root(path: Path, store: DataStore, what: str) -> Path:
    """A dataset folder: as given (absolute, or from the working directory), else under the data
    mirror; a missing folder is a DataError naming every place looked at."""
    candidates = [path.expanduser()]
    if not path.is_absolute() and store.mirror is not None:
        candidates.append(store.mirror / path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"{what} folder {path} not found (looked at {looked}); set data.options.path to the "
        "folder in the layout of docs/datasets.md"
    )


def frame_files(folder: Path) -> list[Path]:
    """The image files of a frame folder, sorted by name (hidden files ignored)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def check_frame(path: Path, min_size: int) -> None:
    """Refuse an unreadable frame, a mode that is not 8-bit, or a frame below `min_size`."""
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot read as an image ({exc})") from None
    if mode not in CONVERTIBLE_MODES:
        raise DataError(
            f"{path}: image mode {mode!r} is not an 8-bit image mode; save frames as 8-bit RGB "
            f"(or grayscale) JPEG/PNG (accepted modes: {', '.join(CONVERTIBLE_MODES)})"
        )
    if min(size) < min_size:
        raise DataError(
            f"{path}: frame of {size[0]} x {size[1]} pixels is smaller than min_frame_size "
            f"{min_size}; re-extract the frames or lower data.options.visual.min_frame_size"
        )


def check_clip(clip: Clip, audio: AudioOptions, visual: FrameOptions) -> list[Path]:
    """Everything about one clip that can be checked without decoding it; returns its frames."""
    if not clip.audio.is_file():
        raise DataError(f"clip {clip.name}: audio file {clip.audio} not found")
    check_wav(clip.audio, audio.sample_rate, audio.channels, audio.resample)
    if not clip.frames.is_dir():
        raise DataError(f"clip {clip.name}: frame folder {clip.frames} not found")
    files = frame_files(clip.frames)
    if len(files) < visual.frames:
        raise DataError(
            f"clip {clip.name}: frame folder {clip.frames} holds {len(files)} image(s), "
            f"{visual.frames} needed (data.options.visual.frames)"
        )
    for path in files:
        check_frame(path, visual.min_frame_size)
    return files


def check_clips(
    clips: Sequence[Clip], audio: AudioOptions, visual: FrameOptions, bad_clips: BadClipPolicy
) -> tuple[list[Clip], list[list[Path]]]:
    """Check every clip before training. With `bad_clips="error"` the first bad clip raises;
    with "skip" bad clips are dropped and reported in one warning."""
    kept, frames, problems = [], [], []
    for clip in clips:
        try:
            files = check_clip(clip, audio, visual)
        except DataError as error:
            if bad_clips == "error":
                raise DataError(
                    f"{error} (set data.options.bad_clips: skip to leave such clips out)"
                ) from None
            problems.append(str(error))
            continue
        kept.append(clip)
        frames.append(files)
    if problems:
        log.warning(
            "skipped %d bad clip(s) of %d; first: %s", len(problems), len(clips), problems[0]
        )
    if not kept:
        raise DataError(f"no usable clip left of {len(clips)}; first problem: {problems[0]}")
    return kept, frames


# -- visual front-end -----------------------------------------------------------------------


def random_resized_box(
    width: int, height: int, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) as torchvision's RandomResizedCrop draws it:
    area 8-100% of the image, aspect ratio 3/4-4/3 (log-uniform), 10 tries, then the centre."""
    area = width * height
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        values = torch.rand(2, generator=generator).tolist()
        target = area * (0.08 + values[0] * (1.0 - 0.08))
        ratio = math.exp(log_ratio[0] + values[1] * (log_ratio[1] - log_ratio[0]))
        crop_w = round(math.sqrt(target * ratio))
        crop_h = round(math.sqrt(target / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
            top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
            return left, top, left + crop_w, top + crop_h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_frame(
    path: Path, size: int, augment: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(3, size, size) float RGB in [0, 1]."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode the image ({exc})") from None
    box = random_resized_box(*rgb.size, generator) if augment else None
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if augment and float(torch.rand(1, generator=generator)) < 0.5:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy())  # (H, W, 3)
    return pixels.permute(2, 0, 1).float() / 255.0


def pick_frames(count: int, wanted: int, train: bool) -> list[int]:
    """`wanted` distinct frame indices: random and sorted in training, evenly spaced otherwise."""
    if train:
        return sorted(torch.randperm(count)[:wanted].tolist())
    return [int(i) for i in np.linspace(0, count - 1, wanted).round()]


class AudioVisualClips(Dataset):
    """Checked clips, loaded lazily: the spectrogram and the frames of one clip per item."""

    def __init__(
        self,
        clips: Sequence[Clip],
        frames: Sequence[Sequence[Path]],
        audio: AudioOptions,
        visual: FrameOptions,
        train: bool,
    ) -> None:
        self.clips = list(clips)
        self.frames = [list(f) for f in frames]
        self.audio = audio
        self.visual = visual
        self.train = train
        self.targets = torch.tensor([clip.label for clip in self.clips], dtype=torch.long)
        self.present = torch.ones(len(self.clips), len(MODALITIES), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.clips)

    def subset(self, indices: Sequence[int] | np.ndarray, train: bool) -> AudioVisualClips:
        rows = [int(i) for i in indices]
        return AudioVisualClips(
            [self.clips[i] for i in rows],
            [self.frames[i] for i in rows],
            self.audio,
            self.visual,
            train,
        )

    def __getitem__(self, index: int) -> Sample:
        clip = self.clips[index]
        spectrogram = load_spectrogram(clip.audio, self.audio, train=self.train)
        files = self.frames[index]
        augment = self.train and self.visual.augment
        chosen = pick_frames(len(files), self.visual.frames, self.train)
        frames = torch.stack(
            [load_frame(files[i], self.visual.image_size, augment) for i in chosen]
        )  # (frames, 3, size, size)
        return {
            "inputs": {"audio": spectrogram, "visual": frames},
            "present": self.present[index],
            "target": self.targets[index],
        }


def visual_shape(visual: FrameOptions) -> tuple[int, int, int, int]:
    return (visual.frames, 3, visual.image_size, visual.image_size)


def imagenet_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std shaped (3, 1, 1), broadcasting over (frames, 3, H, W)."""
    return torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
