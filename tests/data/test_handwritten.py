from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from dmrnet.data import DATASETS, DataSplits, DataStore, build_data
from dmrnet.data.handwritten import (
    HANDWRITTEN_FILE,
    HANDWRITTEN_VIEWS,
    HandwrittenOptions,
    build,
)
from dmrnet.errors import ConfigError


@pytest.fixture(scope="module")
def mirror() -> Path:
    """The data mirror from DMRNET_DATA (CI: ../shared/data); the tests never download."""
    root = os.environ.get("DMRNET_DATA")
    if not root or not (Path(root) / HANDWRITTEN_FILE.path).is_file():
        pytest.skip(
            f"{HANDWRITTEN_FILE.path} not found under DMRNET_DATA={root!r}; set DMRNET_DATA to "
            "the data mirror (CI uses ../shared/data) to run the handwritten tests"
        )
    return Path(root)


@pytest.fixture(scope="module")
def splits(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> DataSplits:
    store = DataStore(mirror, cache=tmp_path_factory.mktemp("cache"))
    return build(HandwrittenOptions(), store, val_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def file_contents(mirror: Path) -> dict:
    return scipy.io.loadmat(mirror / HANDWRITTEN_FILE.path)


def test_handwritten_is_registered_with_its_file() -> None:
    entry = DATASETS.get("handwritten")
    assert entry.files == (HANDWRITTEN_FILE,)
    assert "TMC%20ICLR/datasets/handwritten_6views.mat" in HANDWRITTEN_FILE.url


def test_spec_describes_six_views_and_ten_digits(splits: DataSplits) -> None:
    spec = splits.spec
    assert spec.modalities.names == ("pix", "fou", "fac", "zer", "kar", "mor")
    assert dict(spec.input_shapes) == {name: (dim,) for name, dim in HANDWRITTEN_VIEWS.items()}
    assert spec.task == "classification"
    assert spec.num_classes == 10
    assert spec.class_names == tuple("0123456789")


def test_fixed_split_has_1600_train_and_400_test_rows(splits: DataSplits) -> None:
    assert len(splits.train) + len(splits.val) == 1600
    assert len(splits.val) == 160
    assert len(splits.test) == 400
    for name, dim in HANDWRITTEN_VIEWS.items():
        assert splits.test.inputs[name].shape == (400, dim)
        assert splits.test.inputs[name].dtype == torch.float32


def test_labels_are_digits_0_to_9(splits: DataSplits, file_contents: dict) -> None:
    assert torch.equal(splits.test.targets, torch.as_tensor(file_contents["gt_test"]).flatten() - 1)
    assert torch.bincount(splits.test.targets).tolist() == [40] * 10


def test_validation_is_stratified_and_disjoint_from_train(
    splits: DataSplits, file_contents: dict
) -> None:
    assert torch.bincount(splits.val.targets).tolist() == [16] * 10
    # Train and validation together are exactly the file's 1600 training rows, each used once.
    views = list(HANDWRITTEN_VIEWS)
    rows = torch.cat(
        [torch.cat([part.inputs[v] for v in views], 1) for part in (splits.train, splits.val)]
    ).numpy()
    file_rows = np.concatenate(
        [file_contents[f"x{i + 1}_train"].astype(np.float32) for i in range(6)], axis=1
    )
    ours, our_counts = np.unique(rows, axis=0, return_counts=True)
    theirs, their_counts = np.unique(file_rows, axis=0, return_counts=True)
    assert np.array_equal(ours, theirs)
    assert np.array_equal(our_counts, their_counts)


def test_features_are_raw_and_statistics_come_from_train(splits: DataSplits) -> None:
    pix = splits.train.inputs["pix"]
    assert torch.equal(pix, pix.round()) and pix.max() > 1  # raw pixel counts, not z-scores
    mean, std = splits.spec.input_stats["fou"]
    assert torch.allclose(mean, splits.train.inputs["fou"].mean(0))
    assert std.shape == (76,)


def test_validation_split_follows_the_seed(mirror: Path, tmp_path: Path) -> None:
    store = DataStore(mirror, cache=tmp_path)
    first = build(HandwrittenOptions(), store, 0.1, seed=1)
    again = build(HandwrittenOptions(), store, 0.1, seed=1)
    other = build(HandwrittenOptions(), store, 0.1, seed=2)
    assert torch.equal(first.val.inputs["pix"], again.val.inputs["pix"])
    assert not torch.equal(first.val.inputs["pix"], other.val.inputs["pix"])


def test_view_subset_keeps_canonical_order(mirror: Path) -> None:
    splits = build_data("handwritten", {"views": ["mor", "pix"]}, mirror, 0.1, 0)
    assert splits.spec.modalities.names == ("pix", "mor")
    assert set(splits.train.inputs) == {"pix", "mor"}


def test_unknown_view_is_a_config_error_naming_it(mirror: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.options\.views: unknown view 'digits'"):
        build_data("handwritten", {"views": ["pix", "digits"]}, mirror, 0.1, 0)
