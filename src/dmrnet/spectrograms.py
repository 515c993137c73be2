"""Audio front-end on tensors: wav -> fixed-length waveform -> log-magnitude spectrogram.

The paper's audio-visual code (after OGM-GE) loads a clip with librosa at a fixed rate, tiles it
to a fixed length, clips it to [-1, 1], and feeds `log(|STFT| + 1e-7)` to a ResNet (CREMA-D: 3 s
at 22.05 kHz, n_fft 512, hop 353, per-sample standardization; Kinetics-Sounds: 5 s at 16 kHz,
n_fft 256, hop 128). dmrnet does the same with soundfile, scipy and `torch.stft`, with every
parameter in `AudioOptions` (part of a dataset's `data.options`). Deliberate differences: the crop
is random only in training and centred at evaluation (the paper's Kinetics-Sounds code crops at
random in testing too), and files are checked before training (`check_wav`), so a bad file fails
at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmrnet.errors import DataError

ShortClip = Literal["tile", "pad"]
ChannelPolicy = Literal["mix", "first", "error"]


class AudioOptions(BaseModel):
    """Front-end parameters. Defaults are the paper's CREMA-D settings."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(22050, gt=0, description="rate every clip is brought to (Hz)")
    seconds: float = Field(3.0, gt=0.0, description="fixed clip length")
    resample: bool = Field(True, description="resample other rates (False: refuse them)")
    channels: ChannelPolicy = Field(
        "mix", description="multi-channel files: average (mix), keep the first, or refuse (error)"
    )
    short: ShortClip = Field("tile", description="clips shorter than `seconds`: tile or zero-pad")
    clip_amplitude: bool = Field(True, description="clip samples to [-1, 1] (the paper's code)")
    n_fft: int = Field(512, ge=8)
    hop_length: int = Field(353, ge=1)
    win_length: int | None = Field(None, ge=2, description="default: n_fft")
    window: Literal["hann", "hamming", "rectangular"] = "hann"
    log_offset: float = Field(1e-7, gt=0.0, description="log(|STFT| + log_offset)")
    standardize: bool = Field(
        False, description="per-sample zero mean, unit std of the spectrogram"
    )

    @model_validator(mode="after")
    def _window_fits(self) -> AudioOptions:
        if self.win_length is not None and self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} is longer than n_fft {self.n_fft}")
        return self

    @property
    def num_samples(self) -> int:
        return round(self.seconds * self.sample_rate)

    def spectrogram_shape(self) -> tuple[int, int]:
        """(frequency bins, frames) of the spectrogram of one clip (centred STFT frames)."""
        return self.n_fft // 2 + 1, 1 + self.num_samples // self.hop_length


# -- files ----------------------------------------------------------------------------------


def _info(path: Path) -> soundfile._SoundFileInfo:
    try:
        return soundfile.info(str(path))
    except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise DataError(f"{path}: cannot read as audio ({exc}); is it a valid wav file?") from None


def check_wav(
    path: str | Path,
    sample_rate: int | None = None,
    channels: ChannelPolicy = "mix",
    resample: bool = True,
) -> soundfile._SoundFileInfo:
    """Validate an audio file from its header (cheap; run on every file before training).

    Refuses unreadable and empty files; with `channels="error"` files with more than one channel;
    with `resample=False` files whose rate is not `sample_rate`. The error names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    info = _info(path)
    if info.frames == 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    if info.channels > 1 and channels == "error":
        raise DataError(_stereo_message(path, info.channels))
    if sample_rate is not None and info.samplerate != sample_rate and not resample:
        raise DataError(_rate_message(path, info.samplerate, sample_rate))
    return info


def read_wav(
    path: str | Path,
    sample_rate: int | None = None,
    channels: ChannelPolicy = "mix",
    resample: bool = True,
) -> torch.Tensor:
    """(T,) float32 waveform in [-1, 1] at `sample_rate` (None: the file's own rate).

    Multi-channel audio is averaged (`mix`), reduced to its first channel (`first`) or refused
    (`error`); another rate is resampled with a polyphase filter or refused (`resample=False`).
    Every refusal is a DataError naming the file, as in `check_wav`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (RuntimeError, OSError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise DataError(f"{path}: cannot read as audio ({exc}); is it a valid wav file?") from None
    if samples.shape[0] == 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    if samples.shape[1] > 1 and channels == "error":
        raise DataError(_stereo_message(path, samples.shape[1]))
    if sample_rate is not None and rate != sample_rate and not resample:
        raise DataError(_rate_message(path, rate, sample_rate))
    mono = samples.mean(axis=1) if channels == "mix" else samples[:, 0]
    if sample_rate is not None and rate != sample_rate:
        common = math.gcd(int(rate), int(sample_rate))
        from scipy.signal import resample_poly  # lazy: scipy.signal costs ~1 s to import

        mono = resample_poly(mono, sample_rate // common, int(rate) // common).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


def _stereo_message(path: Path, count: int) -> str:
    return (
        f"{path}: {count} channels, expected mono; convert it, or set the dataset's audio "
        "option channels to 'mix' (average) or 'first'"
    )


def _rate_message(path: Path, found: int, expected: int) -> str:
    return (
        f"{path}: sample rate {found} Hz, expected {expected} Hz; resample the file, or set "
        "the dataset's audio option resample: true"
    )


# -- fixed length ---------------------------------------------------------------------------


def fix_length(
    wave: torch.Tensor,
    length: int,
    short: ShortClip = "tile",
    offset: int | None = None,
) -> torch.Tensor:
    """Crop or extend a (T,) waveform to `length` samples.

    Longer clips are cropped at `offset` (None: centred; a random offset is the training-time
    crop). Shorter clips are tiled from their start (the paper's `np.tile`), or zero-padded with
    the clip placed at `offset` into the padded window (None: centred).
    """
    count = wave.shape[-1]
    if count == 0:
        raise ValueError("cannot fix the length of an empty waveform")
    if count >= length:
        start = (count - length) // 2 if offset is None else offset
        if not 0 <= start <= count - length:
            raise ValueError(f"crop offset {start} outside 0..{count - length}")
        return wave[..., start : start + length]
    if short == "tile":
        repeats = -(-length // count)
        return wave.repeat(*([1] * (wave.dim() - 1)), repeats)[..., :length]
    start = (length - count) // 2 if offset is None else offset
    if not 0 <= start <= length - count:
        raise ValueError(f"pad offset {start} outside 0..{length - count}")
    out = wave.new_zeros(*wave.shape[:-1], length)
    out[..., start : start + count] = wave
    return out


def random_offset(count: int, length: int, generator: torch.Generator | None = None) -> int:
    """A uniform crop (count > length) or placement (count < length) offset for `fix_length`."""
    span = abs(count - length)
    return int(torch.randint(span + 1, (1,), generator=generator))


# -- spectrogram ----------------------------------------------------------------------------


def _window(options: AudioOptions) -> torch.Tensor:
    size = options.win_length or options.n_fft
    if options.window == "hann":
        return torch.hann_window(size)
    if options.window == "hamming":
        return torch.hamming_window(size)
    return torch.ones(size)


def log_spectrogram(wave: torch.Tensor, options: AudioOptions) -> torch.Tensor:
    """log(|STFT| + offset) of (T,) or (B, T) waveforms -> (F, frames) or (B, F, frames).

    Centred frames with zero padding, as librosa.stft (>= 0.10) computes them in the paper's code.
    Per-sample standardization (the paper's CREMA-D code) when `options.standardize`.
    """
    if options.clip_amplitude:
        wave = wave.clamp(-1.0, 1.0)
    stft = torch.stft(
        wave,
        n_fft=options.n_fft,
        hop_length=options.hop_length,
        win_length=options.win_length,
        window=_window(options).to(wave.device),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    spectrogram = torch.log(stft.abs() + options.log_offset)  # (..., F, frames)
    if options.standardize:
        spectrogram = standardize_per_sample(spectrogram)
    return spectrogram


def standardize_per_sample(spectrogram: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std over the last two dimensions (each spectrogram on its own)."""
    mean = spectrogram.mean(dim=(-2, -1), keepdim=True)
    std = spectrogram.std(dim=(-2, -1), unbiased=False, keepdim=True)
    return (spectrogram - mean) / (std + 1e-9)


def load_spectrogram(
    path: str | Path,
    options: AudioOptions,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The whole front-end for one file: read, fix the length (random crop in training, centred
    at evaluation), spectrogram -> (F, frames)."""
    wave = read_wav(path, options.sample_rate, options.channels, options.resample)
    length = options.num_samples
    offset = None
    if train and (wave.shape[-1] > length or options.short == "pad"):
        offset = random_offset(wave.shape[-1], length, generator)
    return log_spectrogram(fix_length(wave, length, options.short, offset), options)
