"""Evaluation: chunked L_k, the accuracy of L_5000 where log p(x) is known, active units."""

import math

import pytest
import torch
from helpers import X, exact_posterior_model, linear_gaussian, log_px

from iwae_tutorial.bounds import elbo, log_mean_exp
from iwae_tutorial.evaluate import (
    LogMeanExpAccumulator,
    active_units,
    log_likelihood,
    reconstruction_loss,
)
from iwae_tutorial.models import IWAE
from iwae_tutorial.toy import LinearGaussian


def binary_images(n: int, dim: int = 784, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, dim, generator=g), generator=g)


# ------------------------------------------------------------------------------ accumulator
@pytest.mark.parametrize("sizes", [[1], [7], [3, 4], [1, 1, 1, 1, 1, 1, 1], [5, 1, 1]])
def test_accumulator_equals_log_mean_exp(sizes):
    g = torch.Generator().manual_seed(len(sizes))
    t = torch.randn(sum(sizes), 6, generator=g, dtype=torch.float64) * 30 - 1e4
    acc = LogMeanExpAccumulator()
    for chunk in torch.split(t, sizes):
        acc.add(chunk)
    assert acc.count == sum(sizes)
    value = acc.value()
    assert value.dtype == torch.float64 and torch.isfinite(value).all()
    torch.testing.assert_close(value, log_mean_exp(t), rtol=0, atol=1e-9)


def test_accumulator_float32_input_is_accumulated_in_float64():
    t = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1)) - 500
    acc = LogMeanExpAccumulator()
    for chunk in torch.split(t, 7):
        acc.add(chunk)
    torch.testing.assert_close(acc.value(), log_mean_exp(t.double()), rtol=0, atol=1e-9)


def test_empty_accumulator_raises():
    with pytest.raises(ValueError):
        LogMeanExpAccumulator().value()


# ------------------------------------------------------------------------------ chunking
def test_chunked_equals_unchunked_same_generator():
    """One stochastic layer: the noise of chunked draws is the same stream as one draw."""
    torch.manual_seed(0)
    model = IWAE(784, [(20, 8)]).double()
    x = binary_images(6).double()

    def run(chunk):
        return log_likelihood(model, x, 64, batch_size=6, chunk_size=chunk,
                              generator=torch.Generator().manual_seed(3))

    full = run(64)
    assert full.shape == (6,) and full.dtype == torch.float64
    for chunk in (5, 16, 17, 63):
        torch.testing.assert_close(run(chunk), full, rtol=0, atol=1e-8)
    # and a different noise stream gives a visibly different estimate (the test has power)
    other = log_likelihood(model, x, 64, batch_size=6, generator=torch.Generator().manual_seed(4))
    assert (other - full).abs().max() > 1e-3


def test_chunked_equals_unchunked_fixed_noise_two_layers(monkeypatch):
    """With the noise fixed in advance, the chunked estimate is exactly log-mean-exp of all
    k log-weights, whatever the chunk size (two stochastic layers)."""
    torch.manual_seed(1)
    model = IWAE(784, [(20, 8), (10, 4)]).double()
    x = binary_images(5).double()
    k = 50
    eps = [torch.randn(k, len(x), d, dtype=torch.float64) for d in model.latent_dims]
    expected = log_mean_exp(model.log_weights(x, k, eps=eps))
    original = model.log_weights
    seen = []

    def log_weights_fixed(xb, c, generator=None, **kw):
        start = sum(seen) % k
        seen.append(c)
        return original(xb, c, eps=[e[start:start + c] for e in eps], **kw)

    monkeypatch.setattr(model, "log_weights", log_weights_fixed)
    for chunk in (k, 1, 7, 13):
        seen.clear()
        got = log_likelihood(model, x, k, batch_size=len(x), chunk_size=chunk,
                             kernel="reference")
        assert sum(seen) == k and max(seen) <= chunk
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_default_chunks_bound_the_rows():
    torch.manual_seed(0)
    model = IWAE(784, [(20, 8)])
    x = binary_images(10)
    original = model.log_weights
    rows = []

    def spy(xb, c, **kw):
        rows.append(c * len(xb))
        return original(xb, c, **kw)

    model.log_weights = spy
    log_likelihood(model, x, 1000, batch_size=5, max_rows=600, kernel="reference")
    assert max(rows) <= 600 and sum(rows) == 1000 * 10


@pytest.mark.parametrize("layers", [[(20, 8)], [(20, 8), (10, 4)]])
def test_fused_kernel_equals_reference(layers):
    """The fused kernel ("auto" for a plain IWAE) draws the same noise in the same order as
    the reference chunk-by-chunk loop over IWAE.log_weights, so the estimates agree."""
    torch.manual_seed(2)
    model = IWAE(784, layers).double()
    x = binary_images(7).double()
    out = {kernel: log_likelihood(model, x, 30, batch_size=3, chunk_size=8, kernel=kernel,
                                  generator=torch.Generator().manual_seed(5))
           for kernel in ("auto", "fused", "reference")}
    torch.testing.assert_close(out["fused"], out["reference"], rtol=0, atol=1e-9)
    torch.testing.assert_close(out["auto"], out["fused"], rtol=0, atol=0)


class _NotAnIWAE(torch.nn.Module):
    """Any model with log_weights(x, k, generator=) -> [k, batch] works with the reference."""

    device = torch.device("cpu")

    def log_weights(self, x, k, generator=None):
        return torch.randn(k, x.shape[0], generator=generator, dtype=torch.float64)


def test_fused_kernel_needs_an_iwae():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="kernel='reference'"):
        log_likelihood(_NotAnIWAE(), x, 5, kernel="fused")
    assert log_likelihood(_NotAnIWAE(), x, 5).shape == (3,)  # "auto" falls back
    with pytest.raises(ValueError, match="kernel must be"):
        log_likelihood(IWAE(784, [(20, 8)]), binary_images(2), 5, kernel="fast")


# ------------------------------------------------------------------------------ accuracy
def test_exact_posterior_gives_log_px():
    ll = log_likelihood(exact_posterior_model(), X, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ll, log_px(X), rtol=0, atol=1e-10)


def test_l5000_is_close_to_exact_log_px_with_a_poor_q():
    """The linear Gaussian model with a poor q: L_1 is ~0.4 nats off for two of the points,
    L_5000 within a few hundredths (mean of 20 repetitions)."""
    model = linear_gaussian(0.2, 0.0, math.log(0.5))
    reps = 20
    xs = X.repeat(reps, 1)
    target = log_px(X)
    l5000 = log_likelihood(model, xs, 5000, batch_size=len(xs),
                           generator=torch.Generator().manual_seed(0)).view(reps, len(X))
    assert (l5000.mean(0) - target).abs().max() < 0.015
    with torch.no_grad():
        log_w = model.log_weights(xs, 5000, generator=torch.Generator().manual_seed(0))
    gap_elbo = target - elbo(log_w).view(reps, len(X)).mean(0)
    assert gap_elbo.max() > 0.2  # the ELBO (what a wrong estimator would report) is far off


# ------------------------------------------------------------------------------ active units
def model_with_dead_units() -> IWAE:
    torch.manual_seed(0)
    model = IWAE(12, [(10, 5), (8, 3)])
    with torch.no_grad():
        model.encoder[0].mean.weight[[1, 3]] = 0.0  # E[h1_1 | x], E[h1_3 | x] constant
        model.encoder[0].mean.weight.mul_(3.0)
        model.encoder[1].mean.weight[2] = 0.0  # E[h2_2 | h1] constant
        model.encoder[1].mean.weight.mul_(3.0)
    return model


def test_active_units_counts_dead_units_as_inactive():
    model = model_with_dead_units()
    x = binary_images(500, dim=12)
    au = active_units(model, x, generator=torch.Generator().manual_seed(0))
    assert au.counts == [3, 2]
    v1, v2 = au.variances
    assert v1.shape == (5,) and v2.shape == (3,)
    assert (v1[[1, 3]] == 0).all() and (v1[[0, 2, 4]] > 0.05).all()
    assert v2[2] == 0 and (v2[[0, 1]] > 0.05).all()
    # layer 1: the variance over x of the posterior mean, computed directly
    with torch.no_grad():
        mean1 = model.encoder[0](x)[0].double()
    torch.testing.assert_close(v1, mean1.var(0), rtol=1e-6, atol=1e-9)


def test_active_units_threshold_and_batching():
    model = model_with_dead_units()
    x = binary_images(500, dim=12)
    a = active_units(model, x, batch_size=1000, generator=torch.Generator().manual_seed(0))
    b = active_units(model, x, batch_size=64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.variances[0], b.variances[0])
    assert a.counts == b.counts
    high = float(max(v.max() for v in a.variances)) + 1
    assert active_units(model, x, threshold=high).counts == [0, 0]
    assert active_units(model, x, threshold=-1).counts == [5, 3]


def test_reconstruction_loss_on_the_linear_gaussian_toy():
    """-log p(x | h), h ~ q: E_q[(x - a h - b)^2] / (2 s^2) + log(s sqrt(2 pi)) in closed form
    for q = N(m, v), against the Monte Carlo estimate of evaluate.reconstruction_loss."""
    lg = LinearGaussian()
    model = lg.shifted_model(0.5, 1.3)
    x = torch.tensor([[0.8], [-1.0], [2.0]], dtype=torch.float64)
    m, sd = lg.posterior(x)
    qm, qv = m + 0.5 * sd, (1.3 * sd) ** 2
    exact = (((x[:, 0] - lg.a * qm - lg.b) ** 2 + lg.a ** 2 * qv) / (2 * lg.s ** 2)
             + math.log(lg.s * math.sqrt(2 * math.pi)))
    est = reconstruction_loss(model, x, 200_000, generator=torch.Generator().manual_seed(0))
    assert est.shape == (3,)
    assert torch.allclose(est, exact, atol=0.01)
