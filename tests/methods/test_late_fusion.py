import pytest
import torch
from synthetic import (
    batch_of,
    build,
)

from dmrnet.errors import ConfigError
from dmrnet.methods import METHODS
from dmrnet.methods.late_fusion import LateFusion


def test_late_fusion_is_registered_and_trains_without_modality_dropout(make_config):
    assert METHODS.get("late-fusion") is LateFusion
    model, _ = build(make_config, "late-fusion")
    present = torch.tensor([[True, False, True], [True, True, True]])
    assert torch.equal(model.training_mask(present), present)


def test_a_combination_predicts_the_mean_of_its_classifiers_probabilities(make_config):
    model, data = build(make_config, "late-fusion")
    model.eval()
    batch = batch_of(data.test, 8)
    features = model.encode(batch["inputs"], batch["present"])
    own = [model.classifiers[n](features[:, i]).softmax(-1) for i, n in enumerate("abc")]
    a_and_c = model.decode(features, torch.tensor([[True, False, True]]).expand(8, -1))
    assert torch.allclose(a_and_c.logits.softmax(-1), (own[0] + own[2]) / 2, atol=1e-6)
    b_alone = model.decode(features, torch.tensor([[False, True, False]]).expand(8, -1))
    assert torch.allclose(b_alone.logits.softmax(-1), own[1], atol=1e-6)


def test_each_classifier_is_trained_only_by_its_own_loss(make_config):
    model, data = build(make_config, "late-fusion")
    model.train()
    batch = batch_of(data.train, 16)
    mask = torch.tensor([[True, False, True]]).expand(16, -1)
    output = model.decode(model.encode(batch["inputs"], batch["present"]), mask)
    loss = model.loss(output, batch["target"], mask)
    unimodal = output.extras["unimodal_logits"]
    expected = sum(
        torch.nn.functional.cross_entropy(unimodal[:, i], batch["target"], reduction="none")
        for i in (0, 2)
    )
    assert torch.allclose(loss.per_sample, expected, atol=1e-6)
    loss.total.backward()
    assert (
        model.classifiers["b"].weight.grad is None or model.classifiers["b"].weight.grad.eq(0).all()
    )
    assert model.classifiers["a"].weight.grad.abs().sum() > 0


def test_a_hard_combination_regularizer_is_refused(make_config):
    with pytest.raises(ConfigError, match=r"model\.hcr\.rule.*late-fusion"):
        build(make_config, "late-fusion", hcr={"rule": "loss-topk"})
