import pytest
import torch
from torch import nn

from dmrnet.nn import (
    DeterministicHead,
    DeterministicHeadConfig,
    GaussianHead,
    GaussianHeadConfig,
    MaskedLinearFusion,
    PooledLinear,
    gaussian_kl,
)
from dmrnet.nn.gaussian import LOGVAR_BOUND


def gaussian(readout: bool = False, **fields) -> GaussianHead:
    return GaussianHead(
        GaussianHeadConfig(**fields),
        lambda: nn.Linear(6, 5),
        5,
        readout=(lambda: nn.Linear(5, 3)) if readout else None,
    )


def test_gaussian_head_samples_in_training_and_returns_the_mean_in_evaluation():
    torch.manual_seed(0)
    head = gaussian()
    x = torch.randn(32, 6)
    out = head(x)
    assert out.extras["mu"].shape == out.extras["logvar"].shape == out.embedding.shape == (32, 5)
    assert not torch.allclose(out.embedding, out.extras["mu"])
    head.eval()
    out = head(x)
    assert torch.equal(out.embedding, out.extras["mu"])
    assert torch.equal(out.logits, out.embedding)  # no readout: the logits are z


def test_logvar_init_bias_sets_the_initial_variance():
    torch.manual_seed(0)
    head = gaussian(logvar_norm=False, logvar_init_bias=-4.0)
    nn.init.zeros_(head.logvar_proj.weight)
    out = head(torch.randn(4, 6))
    assert torch.allclose(out.extras["logvar"], torch.full((4, 5), -4.0))
    assert torch.allclose(out.variance, torch.full((4,), torch.tensor(-4.0).exp().item()))
    normed = gaussian(logvar_init_bias=-3.0)
    assert torch.allclose(normed.logvar_norm.bias, torch.full((5,), -3.0))


def test_logvar_is_bounded_so_exp_stays_finite():
    head = gaussian(logvar_norm=False)
    nn.init.constant_(head.logvar_proj.weight, 1e4)
    out = head(torch.ones(4, 6))
    assert out.extras["logvar"].abs().max() <= LOGVAR_BOUND
    assert torch.isfinite(out.embedding).all()
    assert torch.isfinite(head.losses(out.extras)["kl"])


def test_norms_can_be_switched_off_and_dense_heads_work_on_maps():
    head = gaussian(mu_norm=False, logvar_norm=False)
    assert isinstance(head.mu_norm, nn.Identity) and isinstance(head.logvar_norm, nn.Identity)
    dense = GaussianHead(
        GaussianHeadConfig(),
        lambda: nn.Conv2d(6, 5, 1),
        5,
        readout=lambda: PooledLinear(5, 3),
        dense=True,
    )
    out = dense(torch.randn(2, 6, 4, 4))
    assert out.embedding.shape == (2, 5, 4, 4)
    assert out.logits.shape == (2, 3) and out.variance.shape == (2,)
    assert isinstance(dense.mu_norm, nn.BatchNorm2d)


def test_kl_term_is_weighted_and_its_reduction_is_chosen_by_the_backbone():
    mu, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    extras = {"mu": mu, "logvar": logvar}
    config = GaussianHeadConfig(kl_weight=0.5)
    mean = GaussianHead(config, lambda: nn.Conv2d(4, 4, 1), 4, dense=True)
    summed = GaussianHead(config, lambda: nn.Conv2d(4, 4, 1), 4, dense=True, kl_reduction="sum")
    assert torch.allclose(mean.losses(extras)["kl"], 0.5 * gaussian_kl(mu, logvar))
    assert torch.allclose(summed.losses(extras)["kl"], 0.5 * gaussian_kl(mu, logvar) * 9)


def test_deterministic_head_has_no_variance_and_no_loss_terms():
    head = DeterministicHead(DeterministicHeadConfig(), lambda: nn.Linear(6, 5), 5)
    out = head(torch.randn(4, 6))
    assert out.variance is None and head.losses(out.extras) == {}
    assert isinstance(head.norm, nn.BatchNorm1d)
    plain = DeterministicHead(DeterministicHeadConfig(mu_norm=True), None, 6)
    x = torch.randn(4, 6)
    assert torch.equal(plain(x).logits, x)  # no projection: no norm either


@pytest.mark.parametrize("head_class", [DeterministicHead, GaussianHead])
@pytest.mark.parametrize("training", [False, True])
def test_one_pass_decode_equals_the_head_on_each_combination(head_class, training):
    torch.manual_seed(0)
    config = head_class.config_class()
    head = head_class(
        config, lambda: MaskedLinearFusion(3, 4, 5), 5, readout=lambda: nn.Linear(5, 2)
    ).double()
    features = torch.randn(8, 3, 4, dtype=torch.float64)
    masks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    head.train()
    for _ in range(3):  # move the BatchNorm statistics away from their initial values
        head(features, masks[2].expand(8, -1))
    head.train(training)
    if training and head.provides_variance:
        # Sampling: the one-pass decode normalizes all combinations as one batch.
        outputs = head.forward_many(features, masks)
        assert [o.logits.shape for o in outputs] == [(8, 2)] * 3
        return
    for mask, many in zip(masks, head.forward_many(features, masks), strict=True):
        single = head(features, mask.expand(8, -1))
        if training:  # training-mode BatchNorm: the statistics of all combinations together
            assert many.logits.shape == single.logits.shape
            continue
        assert torch.allclose(many.logits, single.logits, rtol=1e-10, atol=1e-10)
        if head.provides_variance:
            assert torch.allclose(many.variance, single.variance, rtol=1e-10, atol=1e-10)
