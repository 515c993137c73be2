"""The audio front-end: reading wav files under each channel/rate policy, fixed lengths, and the
log-magnitude spectrogram against a NumPy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from dmrnet.errors import DataError
from dmrnet.spectrograms import (
    AudioOptions,
    check_wav,
    fix_length,
    load_spectrogram,
    log_spectrogram,
    read_wav,
    standardize_per_sample,
)


def tone(rate: int, seconds: float, frequency: float, channels: int = 1) -> np.ndarray:
    time = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * frequency * time).astype(np.float32)
    return (
        np.stack([wave * (c + 1) / channels for c in range(channels)], 1) if channels > 1 else wave
    )


def write(path: Path, data: np.ndarray, rate: int) -> Path:
    soundfile.write(path, data, rate, subtype="FLOAT")
    return path


def test_read_wav_returns_mono_float_at_the_file_rate(tmp_path: Path) -> None:
    data = tone(8000, 0.5, 440)
    wave = read_wav(write(tmp_path / "a.wav", data, 8000), sample_rate=8000)
    assert wave.dtype == torch.float32 and wave.shape == (4000,)
    assert np.allclose(wave.numpy(), data, atol=1e-6)


def test_stereo_is_mixed_kept_first_or_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "stereo.wav", tone(8000, 0.1, 440, channels=2), 8000)
    left, right = soundfile.read(path, dtype="float32")[0].T
    assert np.allclose(read_wav(path, 8000, channels="mix").numpy(), (left + right) / 2, atol=1e-6)
    assert np.allclose(read_wav(path, 8000, channels="first").numpy(), left, atol=1e-6)
    with pytest.raises(DataError, match=r"stereo\.wav: 2 channels, expected mono"):
        read_wav(path, 8000, channels="error")


def test_other_rates_are_resampled_keeping_the_pitch_or_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "hi.wav", tone(16000, 1.0, 1000), 16000)
    wave = read_wav(path, sample_rate=8000)
    assert wave.shape == (8000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(int(spectrum.argmax()) - 1000) <= 1  # 1 Hz bins over 1 s: still a 1 kHz tone
    with pytest.raises(DataError, match=r"hi\.wav: sample rate 16000 Hz, expected 8000 Hz"):
        read_wav(path, sample_rate=8000, resample=False)


def test_unreadable_empty_and_missing_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"\x00\x01 definitely not RIFF")
    with pytest.raises(DataError, match=r"garbage\.wav: cannot read as audio"):
        read_wav(garbage)
    empty = write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    for reader in (check_wav, read_wav):
        with pytest.raises(DataError, match=r"empty\.wav: empty audio file \(0 samples\)"):
            reader(empty)
    with pytest.raises(DataError, match=r"missing\.wav: audio file not found"):
        read_wav(tmp_path / "missing.wav")


def test_fix_length_crops_tiles_and_pads() -> None:
    wave = torch.arange(1.0, 11.0)  # 10 samples
    assert fix_length(wave, 4).tolist() == [4.0, 5.0, 6.0, 7.0]  # centred crop
    assert fix_length(wave, 4, offset=6).tolist() == [7.0, 8.0, 9.0, 10.0]
    assert fix_length(wave, 25, short="tile").tolist() == wave.tolist() * 2 + [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    ]
    padded = fix_length(wave, 14, short="pad")
    assert padded.tolist() == [0.0, 0.0, *wave.tolist(), 0.0, 0.0]
    assert fix_length(wave, 14, short="pad", offset=4)[4:].tolist() == wave.tolist()
    with pytest.raises(ValueError, match="crop offset 7"):
        fix_length(wave, 4, offset=7)


def test_log_spectrogram_matches_a_numpy_reference() -> None:
    options = AudioOptions(sample_rate=8000, seconds=0.1, n_fft=64, hop_length=16)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.normal(size=options.num_samples)).clip(-1, 1).astype(np.float32)
    ours = log_spectrogram(torch.from_numpy(wave), options)
    assert tuple(ours.shape) == options.spectrogram_shape() == (33, 51)
    # Reference: centred frames (zero padding of n_fft / 2), periodic Hann window, rfft.
    padded = np.pad(wave.astype(np.float64), 32)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(64) / 64)
    frames = np.stack([padded[i * 16 : i * 16 + 64] * window for i in range(51)], axis=1)
    magnitude = np.abs(np.fft.rfft(frames, axis=0))
    # Compared as magnitudes: float32 rounding is amplified by the log near empty bins.
    assert np.allclose(np.exp(ours.double().numpy()) - 1e-7, magnitude, rtol=1e-4, atol=1e-5)


def test_spectrogram_peak_is_at_the_tone_frequency() -> None:
    options = AudioOptions(sample_rate=8000, seconds=0.5, n_fft=256, hop_length=128)
    spectrogram = log_spectrogram(torch.from_numpy(tone(8000, 0.5, 1000)), options)
    assert int(spectrogram.mean(1).argmax()) == 1000 * 256 // 8000


def test_per_sample_standardization_and_amplitude_clipping() -> None:
    spectrogram = standardize_per_sample(torch.randn(2, 10, 7) * 5 + 3)
    assert torch.allclose(spectrogram.mean(dim=(1, 2)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(spectrogram.std(dim=(1, 2), unbiased=False), torch.ones(2), atol=1e-4)
    options = AudioOptions(sample_rate=100, seconds=1.0, n_fft=16, hop_length=8)
    loud = torch.full((100,), 3.0)
    assert torch.equal(log_spectrogram(loud, options), log_spectrogram(torch.ones(100), options))
    linear = options.model_copy(update={"clip_amplitude": False})
    assert not torch.equal(log_spectrogram(loud, linear), log_spectrogram(torch.ones(100), linear))


def test_training_crops_at_random_and_evaluation_at_the_centre(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write(tmp_path / "long.wav", rng.normal(size=4000).astype(np.float32) * 0.1, 8000)
    options = AudioOptions(sample_rate=8000, seconds=0.1, n_fft=64, hop_length=32)
    evaluation = [load_spectrogram(path, options) for _ in range(2)]
    assert torch.equal(evaluation[0], evaluation[1])
    generator = torch.Generator().manual_seed(0)
    training = [load_spectrogram(path, options, True, generator) for _ in range(2)]
    assert not torch.equal(training[0], training[1])


def test_window_longer_than_n_fft_is_rejected() -> None:
    with pytest.raises(ValueError, match="win_length 128 is longer than n_fft 64"):
        AudioOptions(n_fft=64, win_length=128)
