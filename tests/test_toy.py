"""The known-answer models of iwae_tutorial.toy against closed forms."""

import math

import torch

from iwae_tutorial.data import camel_log_prob
from iwae_tutorial.toy import (
    LinearGaussian,
    count_modes,
    kl_q_posterior_on_grid,
    posterior_on_grid,
    q_on_grid,
)

LG = LinearGaussian(a=1.5, b=0.3, s=0.7)
X = torch.tensor([[-1.0], [0.4], [2.0]], dtype=torch.float64)
Z = torch.linspace(-6, 6, 2401, dtype=torch.float64)


def test_grid_posterior_matches_the_analytic_posterior():
    post, log_px = posterior_on_grid(LG.exact_model(), X, Z)
    mean, std = LG.posterior(X)
    analytic = torch.exp(-0.5 * ((Z[:, None] - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    assert torch.allclose(post, analytic, atol=1e-6)
    assert torch.allclose(log_px, LG.log_px(X), atol=1e-6)
    # and q of the exact model is the same density
    assert torch.allclose(q_on_grid(LG.exact_model(), X, Z), analytic, atol=1e-6)


def test_grid_kl_is_the_gap_between_log_px_and_the_exact_elbo():
    model = LG.shifted_model(shift=1.0, std_scale=1.7)
    mean, sd = LG.posterior(X)
    q_mean, q_std = mean + sd, 1.7 * sd
    kl = kl_q_posterior_on_grid(model, X, Z)
    assert torch.allclose(kl, LG.log_px(X) - LG.exact_elbo(X, q_mean, q_std), atol=1e-5)
    assert (kl > 0.1).all()
    assert torch.allclose(kl_q_posterior_on_grid(LG.exact_model(), X, Z),
                          torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_count_modes():
    x = torch.linspace(-3, 3, 601)
    assert count_modes(camel_log_prob(x[:, None]).exp()) == 2
    assert count_modes(torch.exp(-0.5 * x**2)) == 1
    assert count_modes(torch.exp(-0.5 * (x / 2) ** 2) + 1e-3 * torch.sin(40 * x)) == 1
