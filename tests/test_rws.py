"""Reweighted wake-sleep (``objectives.rws_objective``, ``rws``) and the IWAE's implicit
posterior (``implicit``): the identities of the chapter on both, against independent
computations and closed forms."""

import math

import matplotlib
import pytest
import torch
from helpers import grey, seeded_model

from iwae_tutorial import implicit, rws
from iwae_tutorial.bounds import elbo, iwae_bound
from iwae_tutorial.objectives import (
    OBJECTIVES,
    get_objective,
    log_q_at,
    parse_objective,
    rws_objective,
    samples_per_point,
)
from iwae_tutorial.plots import implicit as iplots
from iwae_tutorial.plots import style
from iwae_tutorial.runs import RunConfig
from iwae_tutorial.toy import LinearGaussian, posterior_on_grid, q_on_grid
from iwae_tutorial.train import fit

matplotlib.use("Agg")

LG = LinearGaussian(a=1.5, b=0.3, s=0.7)
Z = torch.linspace(-7, 7, 1401, dtype=torch.float64)
DZ = float(Z[1] - Z[0])


def two_layer_model_and_x():
    model = seeded_model([(8, 3), (5, 2)], seed=0, dim=12, dtype=torch.float64)
    x = torch.bernoulli(grey(3, 12, seed=1, dtype=torch.float64))
    return model, x


def noise(model, k, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(k, batch, d, generator=g, dtype=torch.float64) for d in model.latent_dims]


# ---------------------------------------------------------------------------- the objective
def test_rws_is_a_registered_objective():
    assert get_objective("rws") is OBJECTIVES["rws"] is rws_objective
    assert parse_objective("rws") == ("rws", {})
    assert samples_per_point("rws", 7) == 7
    assert RunConfig(dataset="camel", objective="rws", k=20, layers=[[5, 5, 1]]).name == (
        "camel-rws-k20-1L-5x5x1-s0")


def test_log_q_at_is_the_density_sample_q_reports():
    model, x = two_layer_model_and_x()
    eps = noise(model, 4, x.shape[0])
    hs, log_q = model.sample_q(x, 4, eps=eps)
    assert torch.allclose(log_q_at(model, x, hs), log_q, atol=1e-12)
    # and it is a density: a sample moved away from q's mean is less likely
    moved = [hs[0] + 10.0, hs[1]]
    assert (log_q_at(model, x, moved) < log_q).all()


def test_rws_bound_is_lk_of_the_same_samples():
    model, x = two_layer_model_and_x()
    eps = noise(model, 6, x.shape[0])
    _, bound = rws_objective(model, x, 6, eps=eps)
    assert torch.allclose(bound, iwae_bound(model.log_weights(x, 6, eps=eps)), atol=1e-12)
    assert not bound.requires_grad


def test_wake_decoder_update_is_the_iwae_decoder_gradient():
    """The weighted sum of k * batch per-sample gradients against autograd, two layers."""
    model, x = two_layer_model_and_x()
    g = rws.wake_phase_gradients(model, x, 5, generator=torch.Generator().manual_seed(3))
    assert g.iwae_decoder.norm() > 1e-3 and g.iwae_encoder.norm() > 1e-3
    assert rws.relative_difference(g.wake_decoder, g.iwae_decoder) < 1e-12
    assert rws.relative_difference(g.rws_decoder, g.iwae_decoder) < 1e-12
    assert rws.relative_difference(g.rws_encoder, g.wake_encoder) < 1e-12
    # the encoder updates are different estimators
    assert rws.relative_difference(g.wake_encoder, g.iwae_encoder) > 0.05
    assert torch.allclose(g.weights.sum(0), torch.ones(3, dtype=torch.float64))


def test_with_one_sample_the_decoder_gradient_is_the_elbos():
    model, x = two_layer_model_and_x()
    eps = noise(model, 1, x.shape[0])
    dec = [p for n, p in model.named_parameters() if n.startswith("decoder")]
    g_rws = torch.autograd.grad(rws_objective(model, x, 1, eps=eps)[0].sum(), dec)
    g_elbo = torch.autograd.grad(elbo(model.log_weights(x, 1, eps=eps)).sum(), dec)
    for a, b in zip(g_rws, g_elbo):
        assert torch.allclose(a, b, atol=1e-12)


def _encoder_grads(model, x, k, seed):
    enc = dict((n, p) for n, p in model.named_parameters() if n.startswith("encoder"))
    s = rws_objective(model, x, k, generator=torch.Generator().manual_seed(seed))[0].sum()
    return dict(zip(enc, torch.autograd.grad(s, list(enc.values()))))


def test_rws_encoder_update_tends_to_minus_the_inclusive_kl_gradient():
    """q(z | x) = N(mu, sigma^2) with mu = w x + c and log sigma = u x + v, against the known
    posterior N(m, s2): E_post[grad log q] is (m - mu) / sigma^2 for c and
    (s2 + (m - mu)^2) / sigma^2 - 1 for v (times x for w and u)."""
    model = LG.shifted_model(shift=1.0, std_scale=1.5)
    x = torch.tensor([[0.8]], dtype=torch.float64)
    m, s = LG.posterior(x)
    enc = model.encoder[0]
    mu = float(enc.mean.weight.detach()) * 0.8 + float(enc.mean.bias.detach())
    sigma = math.exp(float(enc.log_std.bias.detach()))
    want_c = float(m - mu) / sigma**2
    want_v = (s**2 + float(m - mu) ** 2) / sigma**2 - 1
    g = _encoder_grads(model, x, 200_000, seed=0)
    assert g["encoder.0.mean.bias"].item() == pytest.approx(want_c, rel=0.03)
    assert g["encoder.0.log_std.bias"].item() == pytest.approx(want_v, rel=0.03)
    assert g["encoder.0.mean.weight"].item() == pytest.approx(0.8 * want_c, rel=0.03)
    # with one sample the update has mean zero (the score's expectation under q)
    draws = torch.stack([_encoder_grads(model, x, 1, seed=i)["encoder.0.mean.bias"]
                         for i in range(400)]).view(-1)
    assert abs(float(draws.mean())) < 4 * float(draws.std()) / 20


def test_rws_trains():
    """fit runs the objective by name, and a few epochs on the camel raise the bound."""
    from iwae_tutorial.data import camel_sample

    x = camel_sample(400, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    from iwae_tutorial.models import IWAE

    model = IWAE(1, [(5, 5, 1)], likelihood="gaussian")
    history = fit(model, x, objective="rws", k=5, epochs=4, seed=0, binarize=False,
                  progress=False)
    assert history[-1]["train_bound"] > history[0]["train_bound"]


# ---------------------------------------------------------------------------- q_IW
def test_implicit_density_of_one_sample_is_q():
    model = LG.shifted_model(shift=1.0, std_scale=1.5)
    x = torch.tensor([[0.8], [-0.5]], dtype=torch.float64)
    log_d = implicit.implicit_log_density_on_grid(model, x, Z, 1)
    assert torch.allclose(log_d.exp(), q_on_grid(model, x, Z), atol=1e-12)


def test_with_q_the_posterior_resampling_changes_nothing():
    """Equal weights: q_IW = q for every k (here q is the exact posterior)."""
    model = LG.exact_model()
    x = torch.tensor([[0.8]], dtype=torch.float64)
    log_d = implicit.implicit_log_density_on_grid(model, x, Z, 7, n_rep=50,
                                                  generator=torch.Generator().manual_seed(0))
    assert torch.allclose(log_d.exp(), q_on_grid(model, x, Z), atol=1e-10)


def test_implicit_density_integrates_to_one():
    model = LG.shifted_model(shift=1.5, std_scale=0.8)
    x = torch.tensor([[0.8]], dtype=torch.float64)
    d = implicit.implicit_log_density_on_grid(model, x, Z, 10, n_rep=4000,
                                              generator=torch.Generator().manual_seed(0)).exp()
    assert float(d.sum() * DZ) == pytest.approx(1.0, abs=0.02)


def test_sir_with_one_sample_draws_from_q():
    model = LG.shifted_model(shift=1.0, std_scale=1.5)
    x = torch.tensor([[0.8]], dtype=torch.float64)
    h = implicit.sir_sample(model, x, 1, 20_000, generator=torch.Generator().manual_seed(0))[0]
    assert h.shape == (20_000, 1, 1)
    mean, std = model.encode(x)[0]
    assert float(h.mean()) == pytest.approx(float(mean), abs=4 * float(std) / math.sqrt(20_000))
    assert float(h.std()) == pytest.approx(float(std), rel=0.03)


def test_sir_draws_follow_the_implicit_density():
    """Two independent routes to q_IW: resampled draws and the density formula, k = 5."""
    model = LG.shifted_model(shift=1.5, std_scale=0.8)
    x = torch.tensor([[0.8], [-0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    n = 40_000
    h = implicit.sir_sample(model, x, 5, n, generator=g)[0][..., 0]  # [n, 2]
    d = implicit.implicit_log_density_on_grid(model, x, Z, 5, n_rep=20_000, generator=g).exp()
    d = d / (d.sum(0) * DZ)
    mean = (d * Z[:, None]).sum(0) * DZ
    sd = ((d * (Z[:, None] - mean) ** 2).sum(0) * DZ).sqrt()
    assert torch.allclose(h.mean(0), mean, atol=float(4 * sd.max() / math.sqrt(n) + 2e-3))
    assert torch.allclose(h.std(0), sd, rtol=0.03)
    # and q_IW is not q: the resampled draws moved towards the posterior
    post_mean, _ = LG.posterior(x)
    q_mean = model.encode(x)[0][0][:, 0]
    assert ((h.mean(0) - post_mean).abs() < 0.7 * (q_mean - post_mean).abs()).all()


def test_the_implicit_posterior_closes_in_on_the_true_one():
    model = LG.shifted_model(shift=1.0, std_scale=1.5)
    x = torch.tensor([[0.8], [-0.5], [1.6]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    post, log_px, res = implicit.compare_on_grid(model, x, Z, [1, 5, 50], n_rep=3000,
                                                 generator=g)
    assert torch.allclose(log_px, LG.log_px(x), atol=1e-6)
    assert (res[1].tv > res[5].tv).all() and (res[5].tv > res[50].tv).all()
    assert (res[1].kl > res[5].kl).all() and (res[5].kl > res[50].kl).all()
    assert (res[50].tv < 0.2 * res[1].tv).all()
    # at k = 1 the ELBO of q_IW is the exact ELBO of q
    mean, sd = LG.posterior(x)
    exact = LG.exact_elbo(x, mean + sd, 1.5 * sd)
    assert torch.allclose(res[1].elbo, exact, atol=1e-4)
    # L_k <= ELBO(q_IW) <= log p(x)
    for k in (1, 5, 50):
        lk, se = implicit.expected_iwae_bound(model, x, k, 3000, generator=g)
        assert (lk <= res[k].elbo + 3 * se + 1e-4).all(), k
        assert (res[k].elbo <= log_px + 1e-12).all(), k
    lk5 = implicit.expected_iwae_bound(model, x, 5, 3000, generator=g)[0]
    assert (res[5].elbo > lk5 + 0.005).all()  # strictly inside: q_IW beats the bound


def test_expected_bound_at_one_sample_is_the_elbo():
    model = LG.shifted_model(shift=1.0, std_scale=1.5)
    x = torch.tensor([[0.8]], dtype=torch.float64)
    mean, se = implicit.expected_iwae_bound(model, x, 1, 20_000,
                                            generator=torch.Generator().manual_seed(0))
    m, sd = LG.posterior(x)
    exact = LG.exact_elbo(x, m + sd, 1.5 * sd)
    assert abs(float(mean - exact)) < 4 * float(se)


def test_distances_on_a_grid():
    p = torch.exp(-0.5 * Z**2) / math.sqrt(2 * math.pi)
    q = torch.exp(-0.5 * (Z - 1) ** 2) / math.sqrt(2 * math.pi)
    assert float(implicit.kl_divergence(p, q, DZ)) == pytest.approx(0.5, abs=1e-4)
    assert float(implicit.kl_divergence(p, p, DZ)) == pytest.approx(0.0, abs=1e-12)
    tv = 2 * torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(0.5)) - 1
    assert float(implicit.total_variation(p, q, DZ)) == pytest.approx(float(tv), abs=1e-3)


def test_score_of_the_exact_model():
    model = LG.exact_model()
    x = torch.tensor([[0.8], [-0.5], [1.6]], dtype=torch.float64)
    xg = torch.linspace(-5, 5, 101, dtype=torch.float64).view(-1, 1)
    s = implicit.score_1d_model(model, x, Z, xg)
    assert s["ll"] == pytest.approx(float(LG.log_px(x).mean()), abs=1e-6)
    assert s["kl_q_post"] < 1e-6 and s["kl_post_q"] < 1e-6
    assert s["humps"] == 1  # a Gaussian p(x)
    shifted = implicit.score_1d_model(LG.shifted_model(1.0, 1.5), x, Z, xg)
    assert shifted["kl_q_post"] > 0.1 and shifted["kl_post_q"] > 0.1
    post, _ = posterior_on_grid(model, x, Z)
    assert s["ll_per_point"].shape == (3,) and post.shape == (len(Z), 3)


# ---------------------------------------------------------------------------- figures
def test_rws_has_its_colour_in_the_figures():
    from matplotlib.colors import same_color

    assert style.model_color("RWS k=20") == style.RWS
    ax = iplots.plot_ll_by_seed({"VAE": ([-1.5, -1.4], [0.01, 0.01]),
                                 "RWS": ([-1.4, -1.37], [0.01, 0.01])}, [0, 1], [-1.36, -1.35])
    colors = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert same_color(colors["RWS"], style.RWS) and same_color(colors["VAE"], style.VAE)
    ax = iplots.plot_distance_vs_k([1, 5, 50], {"x = 0": [0.4, 0.1, 0.01]})
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 2
    cols = iplots.k_colors([50, 1, 5])
    assert list(cols) == [1, 5, 50] and len(set(cols.values())) == 3
