"""The anomaly scores (anomaly.py, eqs. 14-19 of the KTH report) on the linear-Gaussian toy,
where each has a closed form: q(z | x) = N(m, v), p(z) = N(0, 1), p(x | z) = N(a z + b, s^2)."""

from __future__ import annotations

import math

import pytest
import torch

from iwae_tutorial.anomaly import SCORES, anomaly_scores
from iwae_tutorial.toy import LinearGaussian

LG = LinearGaussian()
X = torch.tensor([[0.8], [-1.0], [2.5]], dtype=torch.float64)


def toy():
    return LG.shifted_model(0.5, 1.3)


def q_of_x():
    m, sd = LG.posterior(X)
    return m + 0.5 * sd, (1.3 * sd) ** 2  # q's mean [n] and variance


def gauss_logpdf(x, mean, var):
    return -0.5 * (math.log(2 * math.pi) + torch.log(torch.as_tensor(var)) + (x - mean) ** 2 / var)


def closed_forms() -> dict[str, torch.Tensor]:
    qm, qv = q_of_x()
    x = X[:, 0]
    kl = 0.5 * (qm ** 2 + qv - 1 - math.log(qv))
    reconst = ((x - LG.a * qm - LG.b) ** 2 + LG.a ** 2 * qv) / (2 * LG.s ** 2) + math.log(
        LG.s * math.sqrt(2 * math.pi))
    return {
        "s_vae_kl": kl, "s_vae_reconst": reconst, "s_vae": kl + reconst,
        # L -> infinity: -log E_q[w] = -log p(x); -log E_q[p(z)/q(z)] = -log 1 = 0;
        # -log E_q[p(x|z)] = -log N(x; a m + b, s^2 + a^2 v)
        "s_iwae": -LG.log_px(X), "s_iwae_kl": torch.zeros(3, dtype=torch.float64),
        "s_iwae_reconst": -gauss_logpdf(x, LG.a * qm + LG.b, LG.s ** 2 + LG.a ** 2 * qv),
    }


def test_every_score_against_its_closed_form():
    got = anomaly_scores(toy(), X, 200_000, generator=torch.Generator().manual_seed(0))
    assert list(got) == list(SCORES)
    exact = closed_forms()
    for name in SCORES:
        assert got[name].shape == (3,) and got[name].dtype == torch.float64
        # p(z) / q(z) has infinite variance here (q's variance < p's / 2): a slower approach
        tol = 0.1 if name == "s_iwae_kl" else 0.01
        assert torch.allclose(got[name], exact[name], atol=tol), (name, got[name], exact[name])
    # the analytic KL needs no sampling: it is exact at any L
    one = anomaly_scores(toy(), X, 1, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(one["s_vae_kl"], exact["s_vae_kl"], atol=1e-12)


def test_s_iwae_with_one_sample_is_s_vae_with_one_sample():
    a = anomaly_scores(toy(), X, 1, kl="sample", generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a["s_iwae"], a["s_vae"], atol=1e-12)
    assert torch.allclose(a["s_iwae_kl"], a["s_vae_kl"], atol=1e-12)
    assert torch.allclose(a["s_iwae_reconst"], a["s_vae_reconst"], atol=1e-12)
    # with the analytic KL they agree in expectation over the sample
    g = torch.Generator().manual_seed(3)
    many = [anomaly_scores(toy(), X, 1, generator=g) for _ in range(4000)]
    diff = torch.stack([m["s_iwae"] - m["s_vae"] for m in many])  # [4000, 3]
    assert (diff.mean(0).abs() < 4 * diff.std(0) / math.sqrt(4000)).all()


def test_the_iwae_score_tightens_with_L():
    g = torch.Generator().manual_seed(4)
    s1 = torch.stack([anomaly_scores(toy(), X, 1, generator=g)["s_iwae"] for _ in range(2000)])
    s50 = torch.stack([anomaly_scores(toy(), X, 50, generator=g)["s_iwae"] for _ in range(200)])
    assert (s50.mean(0) < s1.mean(0)).all()  # -L_50 < -L_1: closer to -log p(x)
    assert (s50.mean(0) > -LG.log_px(X) - 0.01).all()


def test_bad_arguments_are_one_line():
    with pytest.raises(ValueError, match="one stochastic layer"):
        from iwae_tutorial.models import IWAE

        anomaly_scores(IWAE(4, [(3, 2), (3, 2)]), torch.rand(2, 4))
    with pytest.raises(ValueError, match="kl must be"):
        anomaly_scores(toy(), X, 5, kl="exact")
