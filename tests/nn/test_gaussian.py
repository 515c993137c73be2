import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from dmrnet.nn import GaussianEmbedding, gaussian_kl
from dmrnet.nn.gaussian import LOGVAR_BOUND


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(8, 16), torch.randn(8, 16)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(gaussian_kl(mu, logvar), expected, atol=1e-5)


def test_dense_kl_sums_channels_and_averages_batch_and_pixels():
    mu, logvar = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    per_pixel = 0.5 * (logvar.exp() + mu**2 - logvar - 1).sum(1)
    assert torch.allclose(gaussian_kl(mu, logvar), per_pixel.mean(), atol=1e-6)


def test_kl_is_zero_for_the_standard_normal_and_has_gradient():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    kl = gaussian_kl(mu, logvar)
    assert kl.item() == 0.0
    (gaussian_kl(mu + 1, logvar)).backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0


def make_embedding(**kwargs):
    return GaussianEmbedding(lambda: nn.Linear(6, 5), 5, **kwargs)


def test_training_samples_and_evaluation_returns_the_mean():
    torch.manual_seed(0)
    embedding = make_embedding()
    x = torch.randn(32, 6)
    out = embedding(x)
    assert out.mu.shape == out.logvar.shape == out.z.shape == (32, 5)
    assert not torch.allclose(out.z, out.mu)
    embedding.eval()
    out = embedding(x)
    assert torch.equal(out.z, out.mu)


def test_logvar_init_bias_sets_the_initial_variance():
    torch.manual_seed(0)
    embedding = make_embedding(logvar_norm=False, logvar_init_bias=-4.0)
    nn.init.zeros_(embedding.logvar_proj.weight)
    out = embedding(torch.randn(4, 6))
    assert torch.allclose(out.logvar, torch.full_like(out.logvar, -4.0))
    normed = make_embedding(logvar_init_bias=-3.0)
    assert torch.allclose(normed.logvar_norm.bias, torch.full((5,), -3.0))


def test_logvar_is_bounded_so_exp_stays_finite():
    embedding = make_embedding(logvar_norm=False)
    nn.init.constant_(embedding.logvar_proj.weight, 1e4)
    out = embedding(torch.ones(4, 6))
    assert out.logvar.abs().max() <= LOGVAR_BOUND
    assert torch.isfinite(out.z).all() and torch.isfinite(gaussian_kl(out.mu, out.logvar))


def test_norms_can_be_switched_off():
    embedding = make_embedding(mu_norm=False, logvar_norm=False)
    assert isinstance(embedding.mu_norm, nn.Identity)
    assert isinstance(embedding.logvar_norm, nn.Identity)
    dense = GaussianEmbedding(lambda: nn.Conv2d(6, 5, 1), 5, dense=True)
    out = dense(torch.randn(2, 6, 4, 4))
    assert out.z.shape == (2, 5, 4, 4)
    assert out.variance_per_sample().shape == (2,)
