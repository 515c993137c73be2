import pytest
import torch
from synthetic import (
    batch_of,
    build,
)

from dmrnet.methods import METHODS
from dmrnet.methods.hemis import HeMIS, mean_and_variance


def test_hemis_is_registered():
    assert METHODS.get("hemis") is HeMIS


def test_fusion_is_the_mean_and_unbiased_variance_of_the_used_modalities():
    features = torch.randn(5, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    fused = mean_and_variance(features, mask)
    assert fused.shape == (5, 8)
    for b in range(5):
        used = features[b, mask[b]]
        assert torch.allclose(fused[b, :4], used.mean(0), atol=1e-6)
        expected = used.var(0, unbiased=True) if len(used) > 1 else torch.zeros(4)
        assert torch.allclose(fused[b, 4:], expected, atol=1e-5)


def test_fusion_of_every_combination_at_once_matches_one_at_a_time():
    features = torch.randn(6, 3, 4)
    masks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    many = mean_and_variance(features, masks, per_combination=True)
    for c, mask in enumerate(masks):
        assert torch.allclose(many[c], mean_and_variance(features, mask.expand(6, -1)), atol=1e-6)


def test_absent_modalities_do_not_change_the_prediction(make_config):
    model, data = build(make_config, "hemis")
    model.eval()
    batch = batch_of(data.test, 8)
    mask = torch.tensor([[True, False, True]]).expand(8, -1)
    before = model(batch["inputs"], mask).logits
    batch["inputs"]["b"] = torch.randn_like(batch["inputs"]["b"]) * 100
    assert torch.allclose(model(batch["inputs"], mask).logits, before)


def test_variance_based_hcr_is_refused(make_config):
    with pytest.raises(Exception, match="variance"):
        build(make_config, "hemis", hcr={"rule": "unimodal-max"})
