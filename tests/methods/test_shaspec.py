import torch
from synthetic import (
    batch_of,
    build,
)

from dmrnet.methods import METHODS
from dmrnet.methods.shaspec import ShaSpec


def test_shaspec_is_registered():
    assert METHODS.get("shaspec") is ShaSpec


def test_loss_has_alignment_and_modality_classification_terms(make_config):
    model, data = build(make_config, "shaspec", dao_weight=0.5, dco_weight=0.25)
    batch = batch_of(data.train, 32)
    mask = torch.ones(32, 3, dtype=torch.bool)
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
    loss = model.loss(output, batch["target"], mask)
    assert set(loss.terms) == {"task", "dao", "dco"}
    assert loss.terms["dao"].item() == 0.5 * output.extras["dao"].item() > 0
    loss.total.backward()
    assert model.modality_classifier.weight.grad.abs().sum() > 0  # DCO trains the classifier
    assert model.shared_encoder.net[0].weight.grad.abs().sum() > 0


def test_one_shared_encoder_serves_every_modality_through_adapters(make_config):
    model, _ = build(make_config, "shaspec", adapter_dim=12)
    # Views of different sizes (8, 5, 3): each is adapted to 12 values for the shared encoder.
    assert [model.adapters[n][1].in_features for n in "abc"] == [8, 5, 3]
    assert model.shared_encoder.net[0].in_features == 12
    assert set(model.encoders) == {"a", "b", "c"}  # the specific encoders


def test_a_missing_feature_is_the_mean_shared_feature_of_the_present_ones(make_config):
    model, data = build(make_config, "shaspec")
    model.eval()
    batch = batch_of(data.test, 8)
    features = model.encode(batch["inputs"], batch["present"])
    mask = torch.tensor([[True, False, True]]).expand(8, -1)
    composed = model.composed(features)  # (B, M, D)
    generated = (features.shared[:, 0] + features.shared[:, 2]) / 2
    slots = torch.stack([composed[:, 0], generated, composed[:, 2]], dim=1)
    everything = torch.ones(8, 3, dtype=torch.bool)
    expected = model.classify(model.fusion(slots, everything))
    assert torch.allclose(model.decode(features, mask).logits, expected, atol=1e-5)


def test_alignment_ignores_modalities_a_sample_does_not_use(make_config):
    model, data = build(make_config, "shaspec")
    model.train()
    batch = batch_of(data.train, 16)
    features = model.encode(batch["inputs"], batch["present"])
    single = torch.tensor([[True, False, False]]).expand(16, -1)
    assert model.auxiliary_losses(features, single.float())["dao"].item() == 0.0
