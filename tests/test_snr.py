"""Gradient signal-to-noise ratios (snr.py) on the linear-Gaussian toy, where q is a shifted,
widened posterior: the estimators' means and the SNR trends of Rainforth et al. (2018)."""

from __future__ import annotations

import math

import pytest
import torch

from iwae_tutorial.snr import fit_slope, gradient_draws, network_snr, noise_floor, snr, snr_curve
from iwae_tutorial.toy import LinearGaussian

X = torch.tensor([[0.8], [-0.5], [1.6]], dtype=torch.float64)


@pytest.fixture(scope="module")
def model():
    return LinearGaussian().shifted_model(1.0, 1.5)


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-parameter z-score of the difference of two means of independent draws."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)).abs() / se


def test_dreg_and_iwae_estimate_the_same_gradient_and_stl_does_not(model):
    g = torch.Generator().manual_seed(0)
    draws = {o: gradient_draws(model, X, 10, o, 20_000, generator=g)
             for o in ("iwae", "dreg", "stl")}
    for net in ("encoder", "decoder"):
        assert z_scores(draws["dreg"][net], draws["iwae"][net]).max() < 4
    # the test can tell a biased estimator apart: STL's encoder gradient is biased for k > 1
    assert z_scores(draws["stl"]["encoder"], draws["iwae"]["encoder"]).max() > 8
    # and it leaves the decoder gradient as it is
    assert z_scores(draws["stl"]["decoder"], draws["iwae"]["decoder"]).max() < 4


def test_snr_trends_with_k(model):
    ks = [10, 100]
    curves = {o: snr_curve(model, X, ks, o, repeats=8_000) for o in ("iwae", "dreg")}
    iw, dr = curves["iwae"].network, curves["dreg"].network
    # Rainforth et al.: IWAE's encoder SNR falls like k^(-1/2), its decoder's grows like k^(1/2)
    assert -0.8 < fit_slope(ks, iw["encoder"]) < -0.3
    assert 0.3 < fit_slope(ks, iw["decoder"]) < 0.7
    # DReG (Tucker et al.): the encoder's SNR grows with k, higher than IWAE's at large k
    assert fit_slope(ks, dr["encoder"]) > 0.3
    assert dr["encoder"][-1] > 10 * iw["encoder"][-1]
    assert dr["decoder"] == pytest.approx(iw["decoder"], rel=0.1)  # the same decoder gradient


def test_snr_removes_the_noise_floor():
    g = torch.Generator().manual_seed(0)
    zero_mean = torch.randn(400, 1000, generator=g, dtype=torch.float64)
    plain = snr(zero_mean, debias=False)
    assert plain.median() > 0.5 / math.sqrt(400)  # the floor of |mean| / std
    assert snr(zero_mean).median() == 0 and network_snr(zero_mean) < 0.01
    shifted = zero_mean + 0.5  # SNR 0.5 everywhere
    assert snr(shifted).median() == pytest.approx(0.5, abs=0.03)
    assert network_snr(shifted) == pytest.approx(0.5, abs=0.02)


def test_fit_slope():
    assert fit_slope([1, 10, 100], [1.0, 10 ** 0.5, 10.0]) == pytest.approx(0.5)
    assert fit_slope([1, 10, 100], [5.0, 2.0, 0.5], k_min=10) == pytest.approx(
        math.log10(0.25))
    with pytest.raises(ValueError, match="at least two"):
        fit_slope([1, 10], [1.0, 0.0])


def test_fit_slope_leaves_out_values_below_the_floor():
    ks, values = [10, 100, 1000], [1.0, 10 ** -0.5, 0.001]
    assert fit_slope(ks, values, floor=noise_floor(10_000)) == pytest.approx(-0.5)
    assert fit_slope(ks, values) < -1
