import pytest
import torch
from synthetic import (
    accuracy_per_combination,
    batch_of,
    build,
    train_briefly,
)

from dmrnet.errors import ConfigError
from dmrnet.methods import METHODS
from dmrnet.methods.dedicated import Dedicated


def names(model):
    return [model.modalities.format(c) for c in model.trained]


def test_dedicated_is_registered_with_one_model_per_combination(make_config):
    assert METHODS.get("dedicated") is Dedicated
    model, _ = build(make_config, "dedicated")
    assert names(model) == ["a", "b", "c", "a+b", "a+c", "b+c", "a+b+c"]
    # Each model has encoders for its own modalities only: it never sees another modality.
    assert [list(m.encoders) for m in model.models][3] == ["a", "b"]


def test_loss_is_finite_and_trains_every_model(make_config):
    model, data = build(make_config, "dedicated")
    model.train()
    batch = batch_of(data.train, 32)
    mask = model.training_mask(batch["present"])
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
    model.loss(output, batch["target"], mask).total.backward()
    for name, sub in zip(names(model), model.models, strict=True):
        assert sub.head.readout.weight.grad.abs().sum() > 0, name


def test_a_short_training_run_learns(make_config):
    model, data = build(make_config, "dedicated")
    train_briefly(model, data, epochs=10)
    accuracy = accuracy_per_combination(model, data)
    assert accuracy["a"] > 0.8 and accuracy["a+b+c"] > 0.8 and accuracy["b"] > 0.4, accuracy


def test_a_prediction_comes_from_the_model_of_its_combination(make_config):
    model, data = build(make_config, "dedicated")
    model.eval()
    batch = batch_of(data.test, 6)
    features = model.encode(batch["inputs"], batch["present"])
    mask = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]] * 2, dtype=torch.bool)
    output = model.decode(features, mask)
    for row, combination in enumerate(["a", "b+c", "a+b+c"] * 2):
        sub = model.models[names(model).index(combination)]
        expected = sub({k: v[row : row + 1] for k, v in features.inputs.items()})
        assert torch.allclose(output.logits[row], expected[0], atol=1e-6)


def test_a_size_cap_falls_back_to_the_largest_trained_sub_combination(make_config):
    model, _ = build(make_config, "dedicated", max_modalities=2)
    assert names(model) == ["a", "b", "c", "a+b", "a+c", "b+c"]
    full = model.modalities.combinations().index((0, 1, 2))
    assert names(model)[int(model.routes[full])] == "a+b"  # first of the largest subsets


def test_an_explicit_list_of_combinations(make_config):
    model, _ = build(make_config, "dedicated", combinations=["c", "a", "b", "b+c"])
    assert names(model) == ["a", "b", "c", "b+c"]
    route = {
        model.modalities.format(c): names(model)[int(r)]
        for c, r in zip(model.modalities.combinations(), model.routes, strict=True)
    }
    assert route == {
        "a": "a",
        "b": "b",
        "c": "c",
        "a+b": "a",
        "a+c": "a",
        "b+c": "b+c",
        "a+b+c": "b+c",
    }


def test_every_modality_needs_its_own_model(make_config):
    with pytest.raises(ConfigError, match=r"model\.combinations: modality 'c' has no model"):
        build(make_config, "dedicated", combinations=["a", "b", "a+c"])


def test_bad_combination_names_the_key(make_config):
    with pytest.raises(ConfigError, match=r"model\.combinations\[1\]"):
        build(make_config, "dedicated", combinations=["a", "a+z"])


def test_a_hard_combination_regularizer_is_refused(make_config):
    with pytest.raises(ConfigError, match=r"model\.hcr\.rule"):
        build(make_config, "dedicated", hcr={"rule": "incomplete"})
