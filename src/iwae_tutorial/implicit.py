"""The IWAE's implicit posterior q_IW (Cremer, Morris & Duvenaud, 2017).

Sampling importance resampling (SIR): draw h_1 .. h_k ~ q(h | x), then pick one of them,
index i with probability w~_i = w_i / sum_j w_j. The picked sample is distributed as

    q_IW(h | x) = k q(h | x) E_{h_2 .. h_k ~ q}[ w(h) / (w(h) + sum_{j >= 2} w(h_j)) ],

with w(h) = p(x, h) / q(h | x). For k = 1 it is q; as k grows it tends to the true posterior
p(h | x): KL(q_IW || p(h | x)) <= log p(x) - L_k (Domke & Sheldon, 2018), so
L_k <= ELBO(q_IW) <= log p(x).

:func:`sir_sample` draws from q_IW for any model; for a model with a 1-D latent,
:func:`implicit_log_density_on_grid` computes q_IW's density on a grid of h (a Monte Carlo
average over the other k - 1 samples, shared by all grid points) and :func:`compare_on_grid`
its distances to the true posterior of :func:`iwae_tutorial.toy.posterior_on_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .bounds import iwae_bound, normalized_weights
from .models import IWAE
from .objectives import log_q_at
from .toy import count_modes, posterior_on_grid, q_on_grid

__all__ = ["sir_sample", "implicit_log_density_on_grid", "total_variation",
           "kl_divergence", "ImplicitQ", "compare_on_grid", "expected_iwae_bound",
           "score_1d_model"]


@torch.no_grad()
def sir_sample(model: IWAE, x: Tensor, k: int, n: int,
               generator: torch.Generator | None = None) -> list[Tensor]:
    """n draws from q_IW(h | x) by sampling importance resampling: k samples from q for each
    draw, one of them kept with probability w~_i.

    x: [batch, x_dim] -> [[n, batch, d_l] per layer]
    """
    batch = x.shape[0]
    hs, log_q = model.sample_q(x.repeat(n, 1), k, generator=generator)  # [k, n * batch, d_l]
    w = normalized_weights((model.log_joint(x.repeat(n, 1), hs) - log_q).double())
    pick = torch.multinomial(w.T, 1, generator=generator).view(1, -1, 1)  # [1, n * batch, 1]
    return [h.gather(0, pick.expand(1, -1, h.shape[-1])).view(n, batch, -1) for h in hs]


@torch.no_grad()
def implicit_log_density_on_grid(model: IWAE, x: Tensor, z: Tensor, k: int,
                                 n_rep: int = 10_000, *,
                                 generator: torch.Generator | None = None,
                                 chunk: int = 2_000) -> Tensor:
    """log q_IW(z | x) on a grid of z for a model with one 1-D latent, by the formula above:
    the expectation over the other k - 1 samples is a mean over ``n_rep`` draws of them (the
    same draws for every grid point), taken in log space in float64. For k = 1 it is log q.

    x: [n, x_dim], z: [m] -> [m, n] (float64, on the CPU)
    """
    if model.latent_dims != [1]:
        raise ValueError(f"a grid needs one stochastic layer of size 1, got {model.latent_dims}")
    dtype = next(model.parameters()).dtype
    x = x.to(model.device, dtype)
    hs = [z.to(model.device, dtype).view(-1, 1, 1).expand(len(z), x.shape[0], 1)]
    log_q = log_q_at(model, x, hs).double()  # [m, n]
    if k == 1:
        return log_q.cpu()
    lw = (model.log_joint(x, hs).double() - log_q)[:, None, :]  # log w(z): [m, 1, n]
    acc = None  # logsumexp over the draws so far of log(w(z) / (w(z) + S)): [m, n]
    done = 0
    while done < n_rep:
        r = min(chunk, n_rep - done)
        others = model.log_weights(x, (k - 1) * r, generator=generator).double()
        log_s = torch.logsumexp(others.view(k - 1, r, -1), dim=0)  # log S: [r, n]
        part = torch.logsumexp(lw - torch.logaddexp(lw, log_s[None]), dim=1)  # [m, n]
        acc = part if acc is None else torch.logaddexp(acc, part)
        done += r
    return (math.log(k) + log_q + acc - math.log(n_rep)).cpu()


def total_variation(p: Tensor, q: Tensor, dz: float) -> Tensor:
    """(1/2) integral |p - q| of two densities on a uniform grid. p, q: [m, ...] -> [...]"""
    return 0.5 * (p - q).abs().sum(0) * dz


def kl_divergence(p: Tensor, q: Tensor, dz: float) -> Tensor:
    """KL(p || q) = integral p log(p / q) of two densities on a uniform grid (0 log 0 = 0).

    p, q: [m, ...] -> [...]
    """
    tiny = torch.finfo(torch.float64).tiny
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (torch.log(p + tiny) - torch.log(q + tiny)),
                        torch.zeros_like(p))
    return terms.sum(0) * dz


@dataclass
class ImplicitQ:
    """q_IW against the true posterior for one k, at each of n data points (on a grid z):

    - ``density``: q_IW(z | x), normalised on the grid, [m, n];
    - ``tv``, ``kl``: total variation and KL(q_IW || p(z | x)), [n];
    - ``elbo``: ELBO(q_IW) = log p(x) - KL(q_IW || p(z | x)), [n].
    """

    k: int
    density: Tensor
    tv: Tensor
    kl: Tensor
    elbo: Tensor


def compare_on_grid(model: IWAE, x: Tensor, z: Tensor, ks: Sequence[int],
                    n_rep: int = 10_000, *,
                    generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor, dict[int, ImplicitQ]]:
    """q_IW of each k in ``ks`` against the model's true posterior on the uniform grid ``z``.

    x: [n, x_dim], z: [m] -> (posterior [m, n], log p(x) [n], {k: ImplicitQ})
    """
    post, log_px = posterior_on_grid(model, x, z)
    dz = float(z[1] - z[0])
    out = {}
    for k in ks:
        log_d = implicit_log_density_on_grid(model, x, z, int(k), n_rep, generator=generator)
        d = torch.exp(log_d - torch.logsumexp(log_d, dim=0) - math.log(dz))  # sums to 1 / dz
        kl = kl_divergence(d, post, dz)
        out[int(k)] = ImplicitQ(int(k), d, total_variation(d, post, dz), kl, log_px - kl)
    return post, log_px, out


@torch.no_grad()
def expected_iwae_bound(model: IWAE, x: Tensor, k: int, n_rep: int,
                        generator: torch.Generator | None = None,
                        max_rows: int = 1_000_000) -> tuple[Tensor, Tensor]:
    """E[L_k] at each data point, as the mean of ``n_rep`` independent estimates, and its
    standard error. x: [n, x_dim] -> (mean [n], stderr [n]) in float64 on the CPU"""
    per_call = max(1, max_rows // (k * x.shape[0]))
    values = []
    done = 0
    while done < n_rep:
        r = min(per_call, n_rep - done)
        log_w = model.log_weights(x, k * r, generator=generator).double()
        values.append(iwae_bound(log_w.view(k, r, -1), dim=0).cpu())  # [r, n]
        done += r
    v = torch.cat(values)
    return v.mean(0), v.std(0) / math.sqrt(v.shape[0])


@torch.no_grad()
def score_1d_model(model: IWAE, x_test: Tensor, z: Tensor, x_grid: Tensor) -> dict:
    """A trained model with a 1-D latent, scored exactly by quadrature on the uniform grid z:

    - ``ll``: the mean test log-likelihood log p(x) and ``ll_se`` its standard error over the
      test points; ``ll_per_point``: [n];
    - ``humps``: the modes of its density on ``x_grid`` (:func:`iwae_tutorial.toy.count_modes`),
      ``log_density``: log p(x) on ``x_grid``, [len(x_grid)];
    - ``kl_q_post`` and ``kl_post_q``: KL(q || p(z | x)) (the gap between log p(x) and the
      ELBO) and KL(p(z | x) || q) (what reweighted wake-sleep's encoder update lowers), each
      averaged over the test points.

    x_test: [n, 1], z: [m], x_grid: [g, 1]
    """
    post, ll = posterior_on_grid(model, x_test, z)
    q = q_on_grid(model, x_test, z)
    dz = float(z[1] - z[0])
    _, log_density = posterior_on_grid(model, x_grid, z)
    return {"ll": float(ll.mean()), "ll_se": float(ll.std() / math.sqrt(len(ll))),
            "ll_per_point": ll, "humps": count_modes(log_density.exp()),
            "log_density": log_density,
            "kl_q_post": float(kl_divergence(q, post, dz).mean()),
            "kl_post_q": float(kl_divergence(post, q, dz).mean())}
