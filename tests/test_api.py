import numpy as np
import pytest
import torch

import dmrnet
from dmrnet.config import parse_config
from dmrnet.errors import DataError
from dmrnet.runs import train


@pytest.fixture
def trained(make_config, tmp_path):
    run_dir = tmp_path / "run"
    train(parse_config(make_config("dmrnet")), run_dir)
    return run_dir


def test_load_and_predict_from_any_subset(trained, synthetic_file):
    data = np.load(synthetic_file)
    model = dmrnet.load(trained)
    full = model.predict({"a": data["a"][:6], "b": data["b"][:6], "c": data["c"][:6]})
    only_c = model.predict({"c": data["c"][:6]})
    assert full.labels.shape == only_c.labels.shape == (6,)
    assert torch.allclose(full.probabilities.sum(-1), torch.ones(6))
    assert full.present.all() and only_c.present[:, 2].all() and not only_c.present[:, :2].any()
    assert full.embedding_variance is not None and (full.embedding_variance > 0).all()
    # The same sample seen with fewer modalities is embedded differently.
    assert not torch.allclose(full.probabilities, only_c.probabilities)


def test_inputs_are_standardized_by_the_model_from_training_statistics(trained, synthetic_file):
    data = np.load(synthetic_file)
    model = dmrnet.load(trained)
    mean = model.method.standardize["a"].mean
    assert mean.shape == (8,) and not torch.allclose(mean, torch.zeros(8))
    first = model.predict({"a": data["a"][:4]})
    assert torch.equal(first.labels, model.predict({"a": data["a"][:4]}).labels)


def test_nan_rows_mean_missing_for_that_sample(trained, synthetic_file):
    data = np.load(synthetic_file)
    a = data["a"][:3].copy()
    a[1] = np.nan
    prediction = dmrnet.load(trained).predict({"a": a, "b": data["b"][:3]})
    assert prediction.present[:, :2].tolist() == [[True, True], [False, True], [True, True]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"z": np.zeros((2, 3))}, "unknown modality 'z'"),
        ({}, "no modality given"),
        ({"a": np.zeros((2, 7))}, "expected samples of shape \\(8,\\)"),
        ({"a": np.zeros((2, 8)), "b": np.zeros((3, 5))}, "different numbers of samples"),
        ({"a": np.full((1, 8), np.nan)}, "no modality present"),
    ],
)
def test_bad_inputs_are_explained(trained, inputs, message):
    with pytest.raises(DataError, match=message):
        dmrnet.load(trained).predict(inputs)
