from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dmrnet.data import DATASETS, DataStore, build_data
from dmrnet.data.handwritten import HANDWRITTEN_FILE, HandwrittenOptions
from dmrnet.data.handwritten import build as build_handwritten
from dmrnet.data.handwritten_pad import HandwrittenPADOptions, build
from dmrnet.errors import ConfigError
from dmrnet.tasks import PresentationAttackTask, build_task


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> DataStore:
    root = os.environ.get("DMRNET_DATA")
    if not root or not (Path(root) / HANDWRITTEN_FILE.path).is_file():
        pytest.skip("set DMRNET_DATA to the data mirror (CI uses ../shared/data)")
    return DataStore(root, cache=tmp_path_factory.mktemp("cache"))


def test_registered_with_the_handwritten_file():
    assert DATASETS.get("handwritten-pad").files == (HANDWRITTEN_FILE,)


def test_digits_0_to_4_are_bona_fide_and_5_to_9_attacks(store: DataStore):
    pad = build(HandwrittenPADOptions(), store, val_fraction=0.1, seed=0)
    digits = build_handwritten(
        HandwrittenOptions(views=["pix", "fou", "kar"]), store, val_fraction=0.1, seed=0
    )
    assert pad.spec.modalities.names == ("pix", "fou", "kar")
    assert pad.spec.task == "pad" and pad.spec.num_classes == 2
    assert pad.spec.extra == {"bona_fide_class": 1, "threshold": "argmax"}
    for part in ("train", "val", "test"):
        ours, theirs = getattr(pad, part), getattr(digits, part)
        assert torch.equal(ours.targets, (theirs.targets < 5).long())
        assert torch.equal(ours.inputs["fou"], theirs.inputs["fou"])
    assert torch.bincount(pad.test.targets).tolist() == [200, 200]
    task = build_task(pad.spec)
    assert isinstance(task, PresentationAttackTask) and task.threshold == "argmax"


def test_options_are_checked(store: DataStore):
    splits = build_data(
        "handwritten-pad", {"views": ["mor", "pix"], "threshold": "eer"}, store.mirror, 0.1, 0
    )
    assert splits.spec.modalities.names == ("pix", "mor")
    assert splits.spec.extra["threshold"] == "eer"
    with pytest.raises(ConfigError, match="data.options.views"):
        build_data("handwritten-pad", {"views": ["pix", "xyz"]}, store.mirror, 0.1, 0)
    with pytest.raises(ConfigError, match="data.options.threshold"):
        build_data("handwritten-pad", {"threshold": "median"}, store.mirror, 0.1, 0)
