"""The checks every dataset gets at the boundary (ArrayMultiModalDataset)."""

import numpy as np
import pytest
import torch

from dmrnet.data.base import ArrayMultiModalDataset, DataSpec, spec_from_dict, spec_to_dict
from dmrnet.errors import DataError
from dmrnet.modalities import ModalitySet

VIEWS = ModalitySet(("a", "b"))


def make(targets, a=None, b=None, present=None, num_classes=3):
    n = len(targets)
    a = np.zeros((n, 2)) if a is None else a
    b = np.zeros((n, 4)) if b is None else b
    return ArrayMultiModalDataset(
        VIEWS,
        {"a": a, "b": b},
        np.asarray(targets),
        num_classes,
        present=present,
        source="views.npz",
    )


def test_labels_outside_the_classes_name_the_sample():
    with pytest.raises(DataError, match=r"views.npz: label 3 at sample 1 is outside 0..2"):
        make([0, 3, 1])
    with pytest.raises(DataError, match="outside"):
        make([0, -1, 1])


def test_views_with_different_sample_counts():
    with pytest.raises(DataError, match=r"views.npz: modality 'b' has 2 samples but there are 3"):
        make([0, 1, 2], b=np.zeros((2, 4)))


def test_nan_is_allowed_only_where_the_modality_is_absent():
    a = np.zeros((3, 2))
    a[1, 0] = np.nan
    with pytest.raises(
        DataError, match=r"modality 'a' has NaN or inf values \(first at sample 1\)"
    ):
        make([0, 1, 2], a=a)
    present = np.array([[1, 1], [0, 1], [1, 1]], dtype=bool)
    dataset = make([0, 1, 2], a=a, present=present)
    item = dataset[1]
    assert not item["present"][0] and torch.equal(item["inputs"]["a"], torch.zeros(2))


def test_availability_mask_shape_and_empty_samples():
    with pytest.raises(DataError, match="availability mask has shape"):
        make([0, 1], present=np.ones((2, 3), dtype=bool))
    with pytest.raises(DataError, match="sample 0 has no modality present"):
        make([0, 1], present=np.array([[0, 0], [1, 1]], dtype=bool))


def test_standardization_ignores_absent_rows_and_constant_features():
    a = np.array([[1.0, 5.0], [3.0, 5.0], [100.0, 5.0]])
    present = np.array([[1, 1], [1, 1], [0, 1]], dtype=bool)
    mean, std = make([0, 1, 2], a=a, present=present).standardization()["a"]
    assert mean.tolist() == [2.0, 5.0]
    assert std.tolist() == [1.0, 1.0]  # constant feature: left unscaled, not divided by zero


def test_spec_round_trips_through_plain_types():
    spec = DataSpec(
        name="x",
        modalities=VIEWS,
        input_shapes={"a": (2,), "b": (4,)},
        task="classification",
        num_classes=3,
        class_names=("p", "q", "r"),
        input_stats={"a": (torch.zeros(2), torch.ones(2)), "b": (torch.ones(4), torch.ones(4))},
    )
    again = spec_from_dict(spec_to_dict(spec))
    assert again.modalities == spec.modalities and again.input_shapes == spec.input_shapes
    assert again.class_names == spec.class_names and torch.equal(
        again.input_stats["b"][0], torch.ones(4)
    )
