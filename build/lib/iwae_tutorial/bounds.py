"""Lower bounds on log p(x) from importance log-weights.

Every function here is a pure function of the log-weights

    log_w[i] = log p(x, h_i) - log q(h_i | x),   h_i ~ q(h | x),  i = 1..k,

stacked along ``dim`` (``log_w: [k, ...]`` by default). All work is done in log space, so
log-weights of -1e4 (typical for MNIST at initialisation) are fine.

Names follow Burda et al. (2015): ``k`` samples, ``L_k`` = ``iwae_bound``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "log_mean_exp",
    "iwae_bound",
    "elbo",
    "power_bound",
    "normalized_weights",
    "effective_sample_size",
]


def log_mean_exp(t: Tensor, dim: int = 0) -> Tensor:
    """log((1/k) sum_i exp(t_i)) along ``dim``, computed with a max shift (``logsumexp``).

    t: [k, ...] -> [...]
    """
    return torch.logsumexp(t, dim=dim) - math.log(t.shape[dim])


def iwae_bound(log_w: Tensor, dim: int = 0) -> Tensor:
    """The k-sample importance weighted bound L_k = log (1/k) sum_i w_i, per data point.

    log_w: [k, ...] -> [...]. For k = 1 this is exactly the ELBO.
    """
    return log_mean_exp(log_w, dim=dim)


def elbo(log_w: Tensor, dim: int = 0) -> Tensor:
    """The k-sample VAE bound ("minibatch ELBO"): (1/k) sum_i log w_i, per data point.

    log_w: [k, ...] -> [...]. Its expectation does not depend on k; only its variance does.
    """
    return log_w.mean(dim=dim)


def power_bound(log_w: Tensor, p: float, dim: int = 0) -> Tensor:
    """log ((1/k) sum_i w_i^p)^(1/p), per data point.

    p = 1 gives ``iwae_bound``; p -> 0 gives ``elbo`` (handled exactly at p = 0). For p in
    (0, 1] the expectation lies between the ELBO and L_k.

    log_w: [k, ...] -> [...]
    """
    if p == 0:
        return elbo(log_w, dim=dim)
    return log_mean_exp(p * log_w, dim=dim) / p


def normalized_weights(log_w: Tensor, dim: int = 0) -> Tensor:
    """w~_i = w_i / sum_j w_j, the self-normalised importance weights (a softmax in log space).

    log_w: [k, ...] -> [k, ...], summing to one along ``dim``.
    """
    return torch.softmax(log_w, dim=dim)


def effective_sample_size(log_w: Tensor, dim: int = 0) -> Tensor:
    """Kish's effective sample size (sum w)^2 / sum w^2, between 1 and k.

    log_w: [k, ...] -> [...]
    """
    return torch.exp(2 * torch.logsumexp(log_w, dim=dim) - torch.logsumexp(2 * log_w, dim=dim))
