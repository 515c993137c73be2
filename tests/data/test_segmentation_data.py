"""The dense dataset: validation at the data boundary, holes, lazy subsets, statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmrnet.data.segmentation import (
    RandomRescaleCropFlip,
    SegmentationArrays,
    median_frequency_weights,
)
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

MODALITIES = ModalitySet(("rgb", "depth"))


def arrays(count=4, size=(6, 8), seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (count, 3, *size), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (count, 1, *size)).astype(np.float32)
    labels = rng.integers(0, 3, (count, *size)).astype(np.uint8)
    return {"rgb": rgb, "depth": depth}, labels


def dataset(inputs, labels, **kwargs):
    kwargs.setdefault("holes", {"depth": 0.0})
    return SegmentationArrays(MODALITIES, inputs, labels, 3, ignore_index=255, **kwargs)


def test_label_values_outside_the_classes_are_rejected_with_sample_and_value():
    inputs, labels = arrays()
    labels[2, 1, 1] = 255  # the ignore index is fine
    dataset(inputs, labels)
    labels[3, 0, 0] = 7
    with pytest.raises(DataError, match=r"scenes\.npz.*label 7 at sample 3"):
        dataset(inputs, labels, source="scenes.npz")


def test_modalities_of_another_size_than_the_labels_are_rejected():
    inputs, labels = arrays()
    inputs["depth"] = inputs["depth"][..., :7]
    with pytest.raises(DataError, match="'depth' is 6x7 but the label maps are 6x8"):
        dataset(inputs, labels)


def test_nan_and_inf_depth_are_holes_but_not_elsewhere():
    inputs, labels = arrays()
    inputs["depth"][0, 0, 0, 0] = np.nan
    inputs["depth"][1, 0, 2, 2] = np.inf
    data = dataset(inputs, labels)
    assert data[0]["inputs"]["depth"][0, 0, 0] == 0.0
    assert data[1]["inputs"]["depth"][0, 2, 2] == 0.0
    rgb_float = {"rgb": inputs["rgb"].astype(np.float32), "depth": inputs["depth"]}
    rgb_float["rgb"][2, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="'rgb' has NaN or inf values .*sample 2"):
        dataset(rgb_float, labels)


def test_statistics_skip_holes_and_subsets_index_lazily():
    inputs, labels = arrays()
    inputs["depth"][:] = 2.0
    inputs["depth"][:, :, 0, :] = 0.0  # a row of holes in every image
    data = dataset(inputs, labels, scales={"rgb": 1 / 255})
    mean, std = data.standardization()["depth"]
    assert mean.shape == (1, 1, 1) and mean.item() == pytest.approx(2.0)
    assert std.item() == 1.0  # constant once holes are left out: not divided by zero
    rgb_mean, _ = data.standardization()["rgb"]
    assert rgb_mean.shape == (3, 1, 1) and 0.3 < float(rgb_mean.mean()) < 0.7
    part = data.subset([3, 1])
    assert len(part) == 2
    assert torch.equal(part[0]["target"], torch.from_numpy(labels[3].astype(np.int64)))
    assert part.present.shape == (2, 2)


def test_median_frequency_weights_favour_rare_classes():
    labels = np.zeros((2, 4, 4), dtype=np.uint8)
    labels[0, 0, :2] = 1  # class 1: 2 of 16 pixels of the one image holding it
    labels[1, :2, :] = 2  # class 2: 8 of 16
    labels[1, 3, 3] = 255
    weights = median_frequency_weights(iter([labels]), 3, ignore_index=255)
    frequency = np.array([(14 + 7) / 31, 2 / 16, 8 / 15])  # class 0: 14 + 7 of 16 + 15
    assert weights == pytest.approx(list(np.median(frequency) / frequency))


def test_rescale_crop_flip_keeps_sizes_and_never_blends_holes_or_labels():
    torch.manual_seed(0)
    depth = torch.tensor([[[0.0, 3.0], [3.0, 0.0]]]).repeat(1, 4, 4)  # (1, 8, 8)
    target = torch.arange(64).reshape(8, 8) % 3
    sample = {
        "inputs": {"rgb": torch.rand(3, 8, 8), "depth": depth},
        "present": torch.ones(2, dtype=torch.bool),
        "target": target,
    }
    augment = RandomRescaleCropFlip((1.2, 1.4), nearest=("depth",))
    for _ in range(5):
        out = augment(sample)
        assert out["inputs"]["rgb"].shape == (3, 8, 8) and out["target"].shape == (8, 8)
        assert set(out["inputs"]["depth"].unique().tolist()) <= {0.0, 3.0}
        assert set(out["target"].unique().tolist()) <= {0, 1, 2}
        assert out["target"].dtype == target.dtype
