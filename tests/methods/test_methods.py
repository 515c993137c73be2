import pytest
import torch

from dmrnet.config import parse_config
from dmrnet.data import build_data
from dmrnet.errors import ConfigError
from dmrnet.methods import METHODS, build_method
from dmrnet.tasks import build_task


def build(make_config, method, **model):
    config = parse_config(make_config(method, **model))
    data = build_data(
        config.data.name, config.data.options, None, config.data.val_fraction, config.seed
    )
    model = build_method(config.model, data.spec, build_task(data.spec))
    return model, data


def batch_of(dataset, size=16):
    items = [dataset[i] for i in range(size)]
    return {
        "inputs": {k: torch.stack([it["inputs"][k] for it in items]) for k in items[0]["inputs"]},
        "present": torch.stack([it["present"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
    }


@pytest.mark.parametrize("name", ["dmrnet", "moddrop"])
def test_registered(name):
    assert name in METHODS


@pytest.mark.parametrize("name", ["dmrnet", "moddrop"])
def test_any_subset_gives_logits_of_the_right_shape(make_config, name):
    model, data = build(make_config, name, **({"hcr": {"rule": "none"}}))
    batch = batch_of(data.train)
    features = model.encode(batch["inputs"], batch["present"])
    assert features.shape == (16, 3, 8)
    for combination in model.modalities.combinations():
        mask = model.modalities.mask(combination).expand(16, -1)
        output = model.decode(features, mask)
        assert output.logits.shape == (16, 4)
        assert (output.variance is not None) == (name == "dmrnet")


@pytest.mark.parametrize("name", ["dmrnet", "moddrop"])
def test_decode_many_equals_decoding_each_combination(make_config, name):
    model, data = build(make_config, name)
    model.eval()
    batch = batch_of(data.test, 32)
    features = model.encode(batch["inputs"], batch["present"])
    masks = model.modalities.masks(model.modalities.combinations())
    many = model.decode_many(features, masks)
    for mask, output in zip(masks, many, strict=True):
        single = model.decode(features, mask.expand(32, -1))
        assert torch.allclose(output.logits, single.logits, atol=1e-5)
        if name == "dmrnet":
            assert torch.allclose(output.variance, single.variance, atol=1e-6)


def test_absent_modalities_change_nothing_they_should_not(make_config):
    model, data = build(make_config, "dmrnet")
    model.eval()
    batch = batch_of(data.test, 8)
    mask = torch.tensor([[True, False, False]]).expand(8, -1)
    before = model(batch["inputs"], mask).logits
    batch["inputs"]["b"] = torch.randn_like(batch["inputs"]["b"]) * 100  # absent: must not matter
    assert torch.allclose(model(batch["inputs"], mask).logits, before)


def test_dmrnet_loss_has_task_and_kl_terms_and_is_finite(make_config):
    model, data = build(make_config, "dmrnet", kl_weight=0.5)
    batch = batch_of(data.train)
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
    batch = batch_of(data.train)
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


@pytest.mark.parametrize("name", ["dmrnet", "moddrop"])
def test_a_short_training_run_learns_every_combination_above_chance(make_config, name):
    torch.manual_seed(0)
    model, data = build(make_config, name)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(data.train, batch_size=32, shuffle=True, drop_last=True)
    for _ in range(15):
        for batch in loader:
            mask = model.training_mask(batch["present"])
            output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
            optimizer.zero_grad()
            model.loss(output, batch["target"], mask).total.backward()
            optimizer.step()
    model.eval()
    batch = batch_of(data.test, len(data.test))
    masks = model.modalities.masks(model.modalities.combinations())
    outputs = model.decode_many(model.encode(batch["inputs"], batch["present"]), masks)
    accuracy = [(o.logits.argmax(-1) == batch["target"]).float().mean().item() for o in outputs]
    assert accuracy[0] > 0.8  # view `a` alone is informative
    assert accuracy[-1] > 0.8  # all three
    assert accuracy[1] > 0.5  # view `b` alone is weak but informative (chance: 0.25)
    # View `c` is nearly noise by construction, so its accuracy is not asserted.


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
