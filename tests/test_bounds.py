"""The bounds on a model whose log p(x) is known exactly: a linear Gaussian model.

p(z) = N(0, 1), p(x | z) = N(a z + b, s^2)  =>  p(x) = N(b, a^2 + s^2),
p(z | x) = N(m(x), v) with v = 1 / (1 + a^2 / s^2), m(x) = v a (x - b) / s^2.

It is built (by ``iwae_tutorial.toy.LinearGaussian``) as an ``IWAE`` with one stochastic
layer, no hidden units and a Gaussian likelihood, so the tests exercise the package's own
log-weights; the exact answers below are written out independently.
"""

import math

import pytest
import torch
from helpers import X, exact_posterior_model, linear_gaussian, log_px

from iwae_tutorial import bounds
from iwae_tutorial.bounds import (
    effective_sample_size,
    elbo,
    iwae_bound,
    log_mean_exp,
    normalized_weights,
    power_bound,
)
from iwae_tutorial.models import IWAE
from iwae_tutorial.objectives import loss


def test_k1_iwae_equals_elbo_exactly():
    log_w = torch.randn(1, 7, dtype=torch.float64) * 100
    assert torch.equal(iwae_bound(log_w), elbo(log_w))


def test_stable_for_very_negative_log_weights():
    log_w = -1e4 + torch.randn(50, 3)
    lk = iwae_bound(log_w)
    assert torch.isfinite(lk).all()
    # L_k lies between the mean and the max of the log-weights
    assert (lk >= elbo(log_w)).all() and (lk <= log_w.max(0).values).all()
    assert torch.isfinite(effective_sample_size(log_w)).all()
    assert torch.isfinite(power_bound(log_w, 0.5)).all()
    w = normalized_weights(log_w)
    assert torch.allclose(w.sum(0), torch.ones(3))


def test_log_mean_exp_matches_naive_where_naive_is_safe():
    t = torch.randn(10, 4, dtype=torch.float64)
    assert torch.allclose(log_mean_exp(t), t.exp().mean(0).log())
    assert torch.allclose(log_mean_exp(t.T, dim=1), t.exp().mean(0).log())


def test_ess_limits():
    assert torch.allclose(effective_sample_size(torch.zeros(8, 2)), torch.full((2,), 8.0))
    one_hot = torch.tensor([[0.0], [-1e4], [-1e4]])
    assert torch.allclose(effective_sample_size(one_hot), torch.ones(1))


def test_power_bound_limits():
    log_w = torch.randn(20, 5, dtype=torch.float64) * 3
    assert torch.allclose(power_bound(log_w, 1.0), iwae_bound(log_w))
    assert torch.allclose(power_bound(log_w, 1e-6), elbo(log_w), atol=1e-4)
    assert torch.equal(power_bound(log_w, 0), elbo(log_w))
    # monotone in p between the two ends
    values = [power_bound(log_w, p) for p in (0.0, 0.25, 0.5, 1.0)]
    for lo, hi in zip(values, values[1:]):
        assert (lo <= hi + 1e-12).all()


def test_exact_posterior_gives_log_px_for_every_k():
    model = exact_posterior_model()
    for k in (1, 2, 10, 100):
        log_w = model.log_weights(X, k)
        for b in (iwae_bound(log_w), elbo(log_w), power_bound(log_w, 0.5)):
            assert torch.allclose(b, log_px(X), atol=1e-10), k


def test_iwae_bound_increases_with_k_towards_log_px():
    torch.manual_seed(0)
    model = linear_gaussian(0.2, 0.0, math.log(0.5))  # a poor q
    target = log_px(X)
    n_rep = 4000
    means = []
    with torch.no_grad():
        for k in (1, 2, 5, 20, 100):
            xs = X.repeat(n_rep, 1)
            lk = iwae_bound(model.log_weights(xs, k)).view(n_rep, len(X)).mean(0)
            means.append(lk)
    gaps = [float((target - m).sum()) for m in means]
    assert all(g > 0 for g in gaps)  # a lower bound
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps  # tighter with k
    assert gaps[-1] < 0.1 * gaps[0]  # and approaching log p(x)


def test_elbo_expectation_does_not_depend_on_k():
    torch.manual_seed(1)
    model = linear_gaussian(0.2, 0.0, math.log(0.5))
    with torch.no_grad():
        xs = X.repeat(20000, 1)
        e1 = elbo(model.log_weights(xs, 1)).mean()
        e10 = elbo(model.log_weights(xs, 10)).mean()
    assert abs(float(e1 - e10)) < 0.02


def _grads(model, scalar):
    grads = torch.autograd.grad(scalar, list(model.parameters()), retain_graph=True)
    return torch.cat([g.reshape(-1) for g in grads])


def test_iwae_gradient_is_weighted_average_of_per_sample_gradients():
    torch.manual_seed(2)
    model = IWAE(6, [(5, 3)]).double()
    x = torch.bernoulli(torch.full((1, 6), 0.5, dtype=torch.float64))
    k = 7
    eps = [torch.randn(k, 1, 3, dtype=torch.float64)]
    log_w = model.log_weights(x, k, eps=eps)[:, 0]
    g_iwae = _grads(model, iwae_bound(log_w))
    w = normalized_weights(log_w).detach()
    per_sample = torch.stack([_grads(model, log_w[i]) for i in range(k)])
    expected = (w[:, None] * per_sample).sum(0)
    assert torch.allclose(g_iwae, expected, atol=1e-10)
    # and the package's loss is the negative batch mean of exactly this bound
    g_loss = _grads(model, loss(model, x, k, "iwae", eps=eps))
    assert torch.allclose(g_loss, -expected, atol=1e-10)
    # while the VAE objective weighs every sample by 1/k
    g_vae = _grads(model, loss(model, x, k, "vae", eps=eps))
    assert torch.allclose(g_vae, -per_sample.mean(0), atol=1e-10)
    assert not torch.allclose(g_vae, g_loss, atol=1e-6)


def test_dreg_encoder_gradient_vanishes_at_exact_posterior():
    """With q = p(z|x) every log-weight is log p(x) whatever h: DReG's encoder gradient is
    exactly zero, while the plain IWAE estimator still carries score-function noise."""
    torch.manual_seed(3)
    model = exact_posterior_model()
    enc = list(model.encoder.parameters())
    g_dreg = torch.autograd.grad(loss(model, X, 5, "dreg"), enc)
    g_iwae = torch.autograd.grad(loss(model, X, 5, "iwae"), enc)
    assert all(torch.allclose(g, torch.zeros_like(g), atol=1e-12) for g in g_dreg)
    assert any(g.abs().max() > 1e-3 for g in g_iwae)


def test_dreg_decoder_gradient_equals_iwae_decoder_gradient():
    torch.manual_seed(4)
    model = IWAE(6, [(5, 4, 3), (4, 2)]).double()
    x = torch.bernoulli(torch.full((3, 6), 0.5, dtype=torch.float64))
    eps = [torch.randn(5, 3, 3, dtype=torch.float64), torch.randn(5, 3, 2, dtype=torch.float64)]
    dec = list(model.decoder.parameters())
    g_dreg = torch.autograd.grad(loss(model, x, 5, "dreg", eps=eps), dec)
    g_iwae = torch.autograd.grad(loss(model, x, 5, "iwae", eps=eps), dec)
    for a, b in zip(g_dreg, g_iwae):
        assert torch.allclose(a, b, atol=1e-10)


def test_bounds_public_names():
    for name in ("log_mean_exp", "iwae_bound", "elbo", "power_bound", "normalized_weights",
                 "effective_sample_size"):
        assert callable(getattr(bounds, name))


@pytest.mark.parametrize("dim", [0, 1])
def test_dim_argument(dim):
    log_w = torch.randn(4, 6)
    moved = log_w if dim == 0 else log_w.T
    assert torch.allclose(iwae_bound(moved, dim=dim), iwae_bound(log_w))
    assert torch.allclose(normalized_weights(moved, dim=dim).sum(dim), torch.ones(6))
