"""Signal-to-noise ratio of gradient estimators (Rainforth et al., 2018).

For one parameter, SNR = |E[g]| / std(g) over independent draws of the estimator's gradient g
(fresh samples h_1..h_k each time, the model and the data fixed). Rainforth et al. show that
for the IWAE bound the encoder's (phi's) SNR falls like 1/sqrt(k) while the decoder's (theta's)
grows like sqrt(k); the doubly reparameterised estimator (DReG, Tucker et al., 2018) gives the
encoder an SNR that grows with k again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from .models import IWAE
from .objectives import get_objective, samples_per_point

__all__ = ["gradient_draws", "snr", "network_snr", "SNRCurve", "snr_curve", "fit_slope",
           "noise_floor", "NETWORKS"]

#: the two networks whose gradients are summarised, by parameter-name prefix
NETWORKS = ("encoder", "decoder")


def gradient_draws(model: IWAE, x: Tensor, k: int, objective: str = "iwae",
                   repeats: int = 64, *, generator: torch.Generator | None = None,
                   max_rows: int = 65_536) -> dict[str, Tensor]:
    """``repeats`` independent draws of the estimator's gradient of the batch-mean objective,
    flattened per network. The draws are vectorised (``torch.func.vmap`` over the noise),
    ``max_rows // (k * batch)`` of them at a time.

    x: [batch, x_dim] -> {"encoder": [repeats, n_phi], "decoder": [repeats, n_theta]} (float64)
    """
    fn = get_objective(objective)
    params = {f"model.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
    n = samples_per_point(objective, k) if isinstance(objective, str) else k

    def surrogate(p: dict[str, Tensor], eps: list[Tensor]) -> Tensor:
        return functional_call(_Objective(model, fn, k), p, (x, eps)).mean()

    per_draw = vmap(grad(surrogate), in_dims=(None, 0))
    chunk = max(1, min(repeats, max_rows // (n * x.shape[0])))
    out: dict[str, list[Tensor]] = {net: [] for net in NETWORKS}
    for start in range(0, repeats, chunk):
        r = min(chunk, repeats - start)
        eps = [torch.randn(r, n, x.shape[0], d, device=x.device, dtype=x.dtype,
                           generator=generator) for d in model.latent_dims]
        g = per_draw(params, eps)
        for net in NETWORKS:
            out[net].append(torch.cat([g[name].reshape(r, -1) for name in params
                                       if name.startswith(f"model.{net}")], 1).double())
    return {net: torch.cat(v) for net, v in out.items()}


class _Objective(torch.nn.Module):
    """A module whose forward is an objective's surrogate (for ``functional_call``)."""

    def __init__(self, model: IWAE, fn, k: int):
        super().__init__()
        self.model, self.fn, self.k = model, fn, k

    def forward(self, x: Tensor, eps: list[Tensor]) -> Tensor:
        return self.fn(self.model, x, self.k, eps=eps)[0]


def snr(draws: Tensor, debias: bool = True) -> Tensor:
    """|E g| / std(g) per parameter from R draws (NaN where every draw is the same).

    The plain estimate |mean| / std never falls below about 0.8 / sqrt(R) even when E g = 0
    (the mean of R draws has a standard deviation of std / sqrt(R)); with ``debias`` the
    squared signal is estimated without that bias, as max(mean^2 - var / R, 0).

    draws: [repeats, n_params] -> [n_params]
    """
    r = draws.shape[0]
    var = draws.var(0, unbiased=True)
    signal2 = draws.mean(0).pow(2) - (var / r if debias else 0.0)
    out = signal2.clamp_min(0).sqrt() / var.sqrt()
    return torch.where(var > 0, out, torch.full_like(var, math.nan))


def network_snr(draws: Tensor) -> float:
    """One SNR for a whole network: ||E g|| / sqrt(E ||g - E g||^2), the length of the mean
    gradient over the root-mean-square length of its noise, with ||E g||^2 estimated without
    bias (as in :func:`snr`). Large gradients weigh more than in a per-parameter average.

    draws: [repeats, n_params] -> float
    """
    r = draws.shape[0]
    noise2 = draws.var(0, unbiased=True).sum()
    signal2 = draws.mean(0).pow(2).sum() - noise2 / r
    return float(signal2.clamp_min(0).sqrt() / noise2.sqrt())


class SNRCurve(NamedTuple):
    """SNR against k of one estimator, per network: :func:`network_snr` (``network``), the
    median over parameters of :func:`snr` (``median``) and every parameter's SNR
    (``per_parameter``: [len(ks), n_params])."""

    objective: str
    ks: list[int]
    network: dict[str, list[float]]
    median: dict[str, list[float]]
    per_parameter: dict[str, Tensor]


def snr_curve(model: IWAE, x: Tensor, ks: Sequence[int], objective: str = "iwae",
              repeats: int = 64, *, seed: int = 0) -> SNRCurve:
    """The SNR of ``objective``'s gradient at every k in ``ks`` (a generator seeded ``seed``
    on the model's device draws the noise). x: [batch, x_dim]."""
    g = torch.Generator(device=model.device).manual_seed(seed)
    per: dict[str, list[Tensor]] = {net: [] for net in NETWORKS}
    whole: dict[str, list[float]] = {net: [] for net in NETWORKS}
    for k in ks:
        draws = gradient_draws(model, x, int(k), objective, repeats, generator=g)
        for net in NETWORKS:
            per[net].append(snr(draws[net]))
            whole[net].append(network_snr(draws[net]))
    stacked = {net: torch.stack(v) for net, v in per.items()}
    median = {net: [float(row[~row.isnan()].median()) for row in s]
              for net, s in stacked.items()}
    return SNRCurve(objective, [int(k) for k in ks], whole, median, stacked)


def fit_slope(ks: Sequence[int], values: Sequence[float], k_min: int = 1,
              floor: float = 0.0) -> float:
    """The least-squares slope of log(values) against log(k), over the ks >= k_min whose
    value is above ``floor`` (e.g. 3 / sqrt(repeats): an SNR that R draws cannot tell from 0)."""
    pts = [(math.log(k), math.log(v)) for k, v in zip(ks, values) if k >= k_min and v > floor]
    if len(pts) < 2:
        raise ValueError("fit_slope needs at least two values above the floor with k >= k_min")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return (sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts))


def noise_floor(repeats: int) -> float:
    """3 / sqrt(repeats): below it an SNR estimated from ``repeats`` draws is mostly noise."""
    return 3.0 / math.sqrt(repeats)
