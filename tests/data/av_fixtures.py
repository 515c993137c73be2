"""Tiny audio-visual trees in the published layouts (generated wav + jpg), for the CREMA-D and
Kinetics-Sounds tests. The class is audible (tone frequency) and visible (frame colour)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image

RATE = 16000
FRAME_SIZE = 40

# A front-end small enough for a test run: 0.25 s at 8 kHz, 33 x 63 spectrograms, 2 frames of
# 32 x 32. The files are 16 kHz, so every clip is also resampled.
TINY_AUDIO = {"sample_rate": 8000, "seconds": 0.25, "n_fft": 64, "hop_length": 32}
TINY_VISUAL = {"frames": 2, "image_size": 32}
TINY_ENCODERS = {
    "audio": {"name": "audio-resnet", "options": {"depth": 10, "width": 4, "stem": "thin"}},
    "visual": {"name": "frames-resnet", "options": {"depth": 10, "width": 4, "stem": "thin"}},
}


def write_wav(path: Path, label: int, index: int, seconds: float = 0.3, channels: int = 1) -> Path:
    rng = np.random.default_rng(index)
    time = np.arange(int(RATE * seconds)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * (300 + 400 * label) * time) + 0.05 * rng.normal(size=time.shape)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data.astype(np.float32), RATE, subtype="PCM_16")
    return path


def write_frames(folder: Path, label: int, index: int, count: int = 3) -> Path:
    rng = np.random.default_rng(index)
    folder.mkdir(parents=True, exist_ok=True)
    colour = np.array([40 * label % 256, 255 - 40 * label % 256, 128])
    for frame in range(count):
        noise = rng.normal(0, 10, (FRAME_SIZE, FRAME_SIZE, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="RGB").save(folder / f"{frame:05d}.jpg")
    return folder


def cremad_tree(root: Path, per_class: int = 3, test_per_class: int = 1) -> Path:
    """CREMA-D/: train.csv, test.csv, AudioWAV/<clip>.wav, Image-01-FPS/<clip>/*.jpg."""
    folder = root / "CREMA-D"
    emotions = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    index = 0
    for split, count in (("train", per_class), ("test", test_per_class)):
        rows = []
        for label, emotion in enumerate(emotions):
            for _ in range(count):
                clip = f"{1001 + index}_DFA_{emotion}_XX"
                write_wav(folder / "AudioWAV" / f"{clip}.wav", label, index)
                write_frames(folder / "Image-01-FPS" / clip, label, index)
                rows.append(f"{clip},{emotion}")
                index += 1
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


KS_CLASSES = ("blowing nose", "bowling", "playing drums")


def kinetics_sounds_tree(root: Path, per_class: int = 4, test_per_class: int = 2) -> Path:
    """kinetics_sounds/: class.txt, audio/{train,test}/<class>/<clip>.wav and
    visual/{train_img,val_img}/Image-01-FPS/<class>/<clip>/*.jpg."""
    folder = root / "kinetics_sounds"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "class.txt").write_text(", ".join(KS_CLASSES))
    index = 0
    for split, frames, count in (
        ("train", "train_img", per_class),
        ("test", "val_img", test_per_class),
    ):
        for label, name in enumerate(KS_CLASSES):
            class_folder = name.replace(" ", "_")
            for _ in range(count):
                clip = f"clip{index:04d}"
                write_wav(folder / "audio" / split / class_folder / f"{clip}.wav", label, index)
                write_frames(
                    folder / "visual" / frames / "Image-01-FPS" / class_folder / clip, label, index
                )
                index += 1
    return folder


def tiny_av_config(dataset: str, path: Path, **options: Any) -> dict[str, Any]:
    """One epoch of a tiny DMRNet on an audio-visual tree."""
    return {
        "name": f"tiny-{dataset}",
        "seed": 0,
        "data": {
            "name": dataset,
            "val_fraction": 0.25,
            "options": {"path": str(path), "audio": TINY_AUDIO, "visual": TINY_VISUAL, **options},
        },
        "model": {
            "method": "dmrnet",
            "encoders": TINY_ENCODERS,
            "feature_dim": 8,
            "embed_dim": 8,
            "hcr": {"rule": "unimodal-max", "warmup_epochs": 1},
        },
        "train": {"epochs": 1, "batch_size": 6, "progress_bar": False},
        "eval": {"batch_size": 16},
    }
