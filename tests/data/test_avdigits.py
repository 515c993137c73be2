"""AV-Digits from the real mirror (skipped without DMRNET_DATA): splits, pairing, the hard
recipe, the derived-file cache, file pinning, and one short training run."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dmrnet.cli import main
from dmrnet.data import DATASETS, DataStore, avdigits, build_data
from dmrnet.data.avdigits import AVDigitsOptions, build, fsdd_manifest, parse_recording_name
from dmrnet.data.mnist import MNIST_TEST_FILES, load_mnist_test
from dmrnet.errors import ConfigError, DataError
from dmrnet.spectrograms import fix_length, log_spectrogram


@pytest.fixture(scope="module")
def mirror() -> Path:
    root = os.environ.get("DMRNET_DATA")
    if not root or not (Path(root) / "fsdd" / "recordings" / "0_george_0.wav").is_file():
        pytest.skip("set DMRNET_DATA to the data mirror (CI uses ../shared/data) for avdigits")
    return Path(root)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avdigits-cache")


@pytest.fixture(scope="module")
def hard(mirror: Path, cache: Path):
    return build(AVDigitsOptions(), DataStore(mirror, cache=cache), 0.1, seed=0)


def test_registered_with_every_pinned_file() -> None:
    files = DATASETS.get("avdigits").files
    assert len(files) == 3002 and set(MNIST_TEST_FILES) <= set(files)
    manifest = fsdd_manifest()
    assert len(manifest) == 3000
    names = [parse_recording_name(name) for name in manifest]
    assert sum(r.index < 5 for r in names) == 300  # FSDD's own test split
    assert len({r.speaker for r in names}) == 6
    assert all(len(digest) == 64 for digest in manifest.values())


def test_recording_names_are_checked() -> None:
    assert parse_recording_name("7_theo_12.wav").digit == 7
    with pytest.raises(DataError, match="not an FSDD recording name"):
        parse_recording_name("seven_theo_12.wav")


def test_fsdd_split_with_validation_carved_from_training_recordings(hard) -> None:
    assert len(hard.test) == 300
    assert len(hard.train) + len(hard.val) == 2700
    train, val = set(hard.train.recordings.tolist()), set(hard.val.recordings.tolist())
    assert not train & val and not (train | val) & set(hard.test.recordings.tolist())
    assert torch.bincount(hard.val.targets).tolist() == [24] * 10  # 4 per digit and speaker
    assert dict(hard.spec.input_shapes) == {"audio": (129, 49), "image": (1, 28, 28)}


def test_images_match_the_digit_and_come_from_disjoint_pools(mirror: Path, hard) -> None:
    parts = (hard.train, hard.val, hard.test)
    pools = [set(part.pool_by_digit[d].tolist()) for part in parts for d in range(10)]
    assert sum(len(p) for p in pools) == 10000 and len(set().union(*pools)) == 10000
    _, labels = load_mnist_test(DataStore(mirror))
    for part in parts:
        assert np.array_equal(labels[part.image_ids.numpy()], part.targets.numpy())


def test_hard_audio_is_mixed_with_a_different_digit_at_equal_energy(hard) -> None:
    test = hard.test
    recordings = test.recordings.tolist()
    labels = dict(zip(recordings, test.targets.tolist(), strict=True))
    for index in range(0, 300, 37):
        assert labels[int(test.distractors[index])] != int(test.targets[index])
        length = test.audio.num_samples
        clip = fix_length(test.waves[recordings[index]], length, "pad")
        distractor = fix_length(test.waves[int(test.distractors[index])], length, "pad")
        noise = torch.roll(distractor, int(test.distractor_offsets[index]))
        mixed = avdigits.mix_at_snr(clip, noise, 0.0)
        assert torch.isclose((mixed - clip).square().sum(), clip.square().sum(), rtol=1e-4)
        assert torch.allclose(
            test.fixed_audio[index], log_spectrogram(mixed, test.audio), atol=1e-4
        )
        assert torch.allclose(
            test.fixed_audio[index], test.spectrogram(index, random=False), atol=1e-4
        )


def test_one_global_scale_per_modality(hard) -> None:
    for mean, std in hard.spec.input_stats.values():
        assert mean.dim() == 0 and std.dim() == 0 and float(std) > 0


def test_training_repairs_images_and_redraws_noise_each_access(hard) -> None:
    torch.manual_seed(0)
    first, second = hard.train[3], hard.train[3]
    assert not torch.equal(first["inputs"]["image"], second["inputs"]["image"])
    assert not torch.equal(first["inputs"]["audio"], second["inputs"]["audio"])
    assert torch.equal(hard.val[3]["inputs"]["image"], hard.val[3]["inputs"]["image"])


def test_cached_rebuild_with_another_seed_keeps_the_test_set(
    mirror: Path, cache: Path, hard, monkeypatch
) -> None:
    files = sorted(p.name for p in (cache / "derived" / "avdigits").iterdir())
    assert [f.split("-")[0] for f in files] == ["fsdd", "images"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("cached recordings were decoded again")

    monkeypatch.setattr(avdigits, "read_wav", no_decoding)
    other = build(AVDigitsOptions(), DataStore(mirror, cache=cache), 0.1, seed=1)
    # Test pairing and noise depend on split_seed only; training pairing follows the run seed.
    assert torch.equal(other.test.fixed_audio, hard.test.fixed_audio)
    assert torch.equal(other.test.image_ids, hard.test.image_ids)
    assert not torch.equal(other.train.image_ids, hard.train.image_ids)


def test_clean_preset_and_the_pca_residual(mirror: Path, cache: Path, hard) -> None:
    clean = build(AVDigitsOptions(preset="clean"), DataStore(mirror, cache=cache), 0.1, seed=0)
    # Another recipe, another cached image file.
    assert len(list((cache / "derived" / "avdigits").glob("images-*.npz"))) == 2
    raw = clean.test.images.flatten(1).double()
    residual = hard.test.images.flatten(1).double()
    # 90% of the pixel variance is removed: what is left varies about 10% as much.
    share = float(residual.var(0).sum() / raw.var(0).sum())
    assert 0.05 < share < 0.15
    # Clean audio is the centred clip itself, without a distractor.
    index = 5
    clip = fix_length(clean.test.waves[int(clean.test.recordings[index])], 6144, "pad")
    assert torch.allclose(clean.test.fixed_audio[index], log_spectrogram(clip, clean.test.audio))


def test_a_changed_recording_fails_with_its_name(mirror: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mirror"
    (copy / "fsdd" / "recordings").mkdir(parents=True)
    shutil.copytree(mirror / "mnist", copy / "mnist")
    for name in fsdd_manifest():
        (copy / "fsdd" / "recordings" / name).symlink_to(mirror / "fsdd" / "recordings" / name)
    victim = copy / "fsdd" / "recordings" / "3_lucas_17.wav"
    victim.unlink()
    victim.write_bytes((mirror / "fsdd" / "recordings" / "3_lucas_18.wav").read_bytes())
    with pytest.raises(DataError, match=r"checksum mismatch for fsdd/recordings/3_lucas_17\.wav"):
        build(AVDigitsOptions(), DataStore(copy, cache=tmp_path / "cache"), 0.1, seed=0)


def test_bad_options_name_the_key(mirror: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.options\.preset"):
        build_data("avdigits", {"preset": "impossible"}, mirror, 0.1, 0)
    with pytest.raises(ConfigError, match=r"data\.options\.audio\.n_ffts: unknown option"):
        build_data("avdigits", {"audio": {"n_ffts": 3}}, mirror, 0.1, 0)


@pytest.mark.slow
def test_one_epoch_end_to_end(mirror: Path, cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DMRNET_CACHE", str(cache))
    source = Path(__file__).parents[2] / "src" / "dmrnet" / "configs" / "avdigits" / "dmrnet.yaml"
    raw = yaml.safe_load(source.read_text())
    raw["data"]["options"] = {"preset": "clean"}
    raw["train"].update(epochs=1, progress_bar=False)
    raw["model"]["hcr"]["warmup_epochs"] = 1
    for encoder in raw["model"]["encoders"].values():
        encoder["options"]["hidden"] = [16]
    config = tmp_path / "avdigits.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run_dir), "--data-root", str(mirror)]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["samples"] == {"audio": 300, "image": 300, "audio+image": 300}
    assert set(results["variance"]) == {"audio", "image", "audio+image"}
    assert results["combinations"]["audio+image"] > 0.3  # ten classes: chance is 0.1
