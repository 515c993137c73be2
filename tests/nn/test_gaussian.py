import torch
from torch.distributions import Normal, kl_divergence

from dmrnet.nn import gaussian_kl


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
