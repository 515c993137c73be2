"""digits-rgbd: composed RGB-D digit scenes from the MNIST test files of the data mirror."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dmrnet.data import build_data, digits_rgbd
from dmrnet.data.digits_rgbd import DigitsRGBDOptions, compose_scene, digit_pools
from dmrnet.errors import ConfigError

MNIST = Path(os.environ.get("DMRNET_DATA", "/nonexistent")) / "mnist"
TINY = {"size": 32, "scenes": 20, "test_scenes": 6}


@pytest.fixture
def mirror() -> str:
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("set DMRNET_DATA to the data mirror (CI uses ../shared/data)")
    return str(MNIST.parent)


def test_digit_pools_are_disjoint_and_cover_every_digit():
    pools = digit_pools(10000, 0.1, seed=0)
    assert [len(pools[s]) for s in ("train", "val", "test")] == [7200, 800, 2000]
    joined = np.concatenate(list(pools.values()))
    assert len(np.unique(joined)) == 10000
    assert not np.array_equal(digit_pools(10000, 0.1, seed=1)["test"], pools["test"])


def test_a_scene_puts_labelled_digits_in_front_of_the_background():
    rng = np.random.default_rng(0)
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[:, 6:22, 10:18] = 255  # a bold bar as digit
    options = DigitsRGBDOptions(size=32, depth_resolution=1, depth_noise=0.0, hole_fraction=0.0)
    rgb, depth, labels = compose_scene(rng, images, np.array([3, 3, 3]), options)
    assert rgb.shape == (3, 32, 32) and rgb.dtype == np.uint8
    assert depth.shape == (1, 32, 32) and labels.shape == (32, 32)
    assert set(np.unique(labels)) == {0, 4}  # background and digit 3 (class 4)
    measured = depth[0] > 0  # shadows beside the digits are holes
    digit, background = measured & (labels == 4), measured & (labels == 0)
    assert depth[0][digit].max() < depth[0][background].mean()


def test_build_is_deterministic_cached_and_seeded_by_the_options(mirror, monkeypatch):
    first = build_data("digits-rgbd", TINY, mirror, 0.2, seed=0)
    assert len(first.train) == 16 and len(first.val) == 4 and len(first.test) == 6
    spec = first.spec
    assert spec.task == "segmentation" and spec.num_classes == 11
    assert spec.input_shapes == {"rgb": (3, 32, 32), "depth": (1, 32, 32)}
    assert spec.extra["holes"] == {"depth": 0.0} and len(spec.extra["class_weights"]) == 11
    sample = first.test[0]
    rgb = sample["inputs"]["rgb"]
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    assert int(sample["target"].max()) <= 10
    # A second build reads the cache and never composes again; the run seed changes nothing.
    monkeypatch.setattr(digits_rgbd, "compose_split", lambda *a, **k: pytest.fail("recomposed"))
    again = build_data("digits-rgbd", TINY, mirror, 0.2, seed=5)
    for split in ("train", "val", "test"):
        a, b = getattr(first, split)[1], getattr(again, split)[1]
        assert all((a["inputs"][m] == b["inputs"][m]).all() for m in ("rgb", "depth"))
        assert (a["target"] == b["target"]).all()
    monkeypatch.undo()
    other = build_data("digits-rgbd", {**TINY, "seed": 1}, mirror, 0.2, seed=0)
    assert not (other.test[0]["inputs"]["rgb"] == first.test[0]["inputs"]["rgb"]).all()


def test_bad_options_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.options.*digits"):
        build_data("digits-rgbd", {"digits": [3, 1]}, None, 0.1, 0)
    with pytest.raises(ConfigError, match=r"data\.options\.colour: unknown option"):
        build_data("digits-rgbd", {"colour": True}, None, 0.1, 0)
