"""Behaviour of the vector methods beyond the registry-wide checks of tests/test_conformance.py."""

import pytest
import torch
from synthetic import accuracy_per_combination, batch_of, build, train_briefly

from dmrnet.config import parse_config
from dmrnet.errors import ConfigError
from dmrnet.methods import METHODS, build_method
from dmrnet.methods.base import EncodersConfig
from dmrnet.methods.stages import StagedMethod
from dmrnet.tasks import build_task

# Vector methods that train in one stage (a staged method's tests train each stage themselves).
VECTOR_METHODS = [
    name
    for name in METHODS
    if issubclass(METHODS.get(name).config_class, EncodersConfig)
    and not issubclass(METHODS.get(name), StagedMethod)
]


def test_dmrnet_loss_has_task_and_kl_terms_and_is_finite(make_config):
    model, data = build(make_config, "dmrnet", kl_weight=0.5)
    batch = batch_of(data.train, 16)
    mask = model.training_mask(batch["present"])
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
    loss = model.loss(output, batch["target"], mask)
    assert set(loss.terms) == {"task", "kl"}
    assert torch.isfinite(loss.total)
    assert loss.total.item() == pytest.approx(sum(t.item() for t in loss.terms.values()), rel=1e-6)
    loss.total.backward()
    assert model.head.logvar_proj.weight.grad.abs().sum() > 0  # KL reaches the variance


def test_dmrnet_samples_in_training_and_uses_the_mean_in_evaluation(make_config):
    model, data = build(make_config, "dmrnet")
    batch = batch_of(data.train, 16)
    mask = torch.ones(16, 3, dtype=torch.bool)
    model.train()
    assert not torch.allclose(
        model(batch["inputs"], mask).logits, model(batch["inputs"], mask).logits
    )
    model.eval()
    assert torch.equal(model(batch["inputs"], mask).logits, model(batch["inputs"], mask).logits)


def test_moddrop_rejects_variance_based_hcr(make_config):
    with pytest.raises(ConfigError, match="variance"):
        build(make_config, "moddrop", hcr={"rule": "unimodal-max"})


def test_unknown_modality_in_sampler_or_hcr_is_a_config_error(make_config):
    with pytest.raises(ConfigError, match="model.sampler.combination"):
        build(make_config, "dmrnet", sampler={"kind": "fixed", "combination": "a+z"})
    with pytest.raises(ConfigError, match=r"model.hcr.combinations\[0\]"):
        build(make_config, "dmrnet", hcr={"rule": "fixed", "combinations": ["q"]})


@pytest.mark.parametrize("name", VECTOR_METHODS)
def test_a_short_training_run_learns_every_informative_combination(make_config, name):
    """Synthetic views (tests/conftest.py): `a` informative, `b` weak, `c` nearly noise."""
    model, data = build(make_config, name)
    train_briefly(model, data)
    accuracy = accuracy_per_combination(model, data)
    assert accuracy["a"] > 0.8, accuracy
    assert accuracy["a+b+c"] > 0.8, accuracy
    assert accuracy["b"] > 0.4, accuracy  # 4 classes: chance is 0.25


def test_a_vector_method_refuses_a_segmentation_dataset(make_config):
    from dmrnet.data.base import DataSpec
    from dmrnet.modalities import ModalitySet

    config = parse_config(make_config("dmrnet"))
    spec = DataSpec(
        name="maps",
        modalities=ModalitySet(("rgb", "depth")),
        input_shapes={"rgb": (3, 8, 8), "depth": (1, 8, 8)},
        task="segmentation",
        num_classes=3,
        ignore_index=255,
    )
    with pytest.raises(ConfigError, match="model.method: 'dmrnet' predicts for tasks"):
        build_method(config.model, spec, build_task(spec))
