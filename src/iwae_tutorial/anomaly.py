"""Anomaly scores from a trained VAE or IWAE: the six scores the KTH report reviews (its
equations 14-19, after Lu & Xu, 2018). Higher means more anomalous. For L samples
z_i ~ q(z | x) of a model with one stochastic layer:

- ``s_vae``         = KL(q(z | x) || p(z)) - (1/L) sum_i log p(x | z_i)       (eq. 14)
- ``s_vae_kl``      = KL(q(z | x) || p(z))                                      (eq. 15)
- ``s_vae_reconst`` = -(1/L) sum_i log p(x | z_i)                               (eq. 16)
- ``s_iwae``        = -log (1/L) sum_i p(x | z_i) p(z_i) / q(z_i | x)           (eq. 17)
- ``s_iwae_kl``     = -log (1/L) sum_i p(z_i) / q(z_i | x)                      (eq. 18)
- ``s_iwae_reconst``= -log (1/L) sum_i p(x | z_i)                               (eq. 19)

``s_vae`` is the negative ELBO and ``s_iwae`` the negative L_L estimate of log p(x). The KL of
eqs. 14-15 is the closed form of two diagonal Gaussians (``kl="analytic"``) or its L-sample
estimate (1/L) sum_i log q(z_i | x) - log p(z_i) (``kl="sample"``; then s_iwae with L = 1 is
exactly s_vae with L = 1). Everything is computed in log space, accumulated in float64.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .bounds import log_mean_exp
from .data import Dataset, load_dataset
from .models import IWAE

__all__ = ["SCORES", "anomaly_scores", "Setup", "setups", "scored_images"]

#: the score names, in the report's order (eqs. 14-19)
SCORES = ("s_vae", "s_vae_kl", "s_vae_reconst", "s_iwae", "s_iwae_kl", "s_iwae_reconst")

_LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def anomaly_scores(model: IWAE, x: Tensor, L: int = 50, *, kl: str = "analytic",
                   batch_size: int = 500, generator: torch.Generator | None = None
                   ) -> dict[str, Tensor]:
    """The six scores of every image, with the same L samples for all of them.

    x: [n, x_dim] -> {name: [n] float64 on the CPU} for the names of :data:`SCORES`
    """
    if len(model.latent_dims) != 1:
        raise ValueError("anomaly_scores needs a model with one stochastic layer (the report's "
                         f"scores are defined for one); this one has {len(model.latent_dims)}")
    if kl not in ("analytic", "sample"):
        raise ValueError(f"kl must be 'analytic' or 'sample', got {kl!r}")
    if L < 1:
        raise ValueError(f"L must be a positive number of samples, got {L}")
    parts: dict[str, list[Tensor]] = {name: [] for name in SCORES}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(model.device)
        hs, log_q = model.sample_q(xb, L, generator=generator)  # [[L, B, d]], [L, B]
        z = hs[0]
        log_px_z = model.log_px_given_h(xb, z).double()  # [L, B]
        log_pz = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1).double()  # [L, B]
        log_q = log_q.double()
        if kl == "analytic":
            (mean, std), = model.encode(xb)
            mean, std = mean.double(), std.double()
            kl_q_p = 0.5 * (mean.pow(2) + std.pow(2) - 1 - 2 * std.log()).sum(-1)  # [B]
        else:
            kl_q_p = (log_q - log_pz).mean(0)
        reconst = -log_px_z.mean(0)
        scores = {"s_vae": kl_q_p + reconst, "s_vae_kl": kl_q_p, "s_vae_reconst": reconst,
                  "s_iwae": -log_mean_exp(log_px_z + log_pz - log_q, dim=0),
                  "s_iwae_kl": -log_mean_exp(log_pz - log_q, dim=0),
                  "s_iwae_reconst": -log_mean_exp(log_px_z, dim=0)}
        for name, value in scores.items():
            parts[name].append(value.cpu())
    return {name: torch.cat(v) for name, v in parts.items()}


class Setup(NamedTuple):
    """One anomaly-detection set-up: the training data, the normal and the anomalous test
    images (grey values; see :func:`scored_images`), and what they are, in words."""

    train: Dataset
    normal: Tensor
    anomalous: Tensor
    trained_on: str
    anomalies: str
    normals: str


def setups(held_out: int = 1) -> dict[str, Setup]:
    """The book's two set-ups: ``heldout`` (MNIST without the digit ``held_out``; anomalies:
    that digit's test images) and ``omniglot`` (all of MNIST; anomalies: Omniglot lake28 test
    characters)."""
    mnist = load_dataset("mnist")
    keep = mnist.y_train != held_out
    train = Dataset("mnist", mnist.x_train[keep], mnist.x_test, True, "bernoulli")
    return {
        "heldout": Setup(train, mnist.x_test[mnist.y_test != held_out],
                         mnist.x_test[mnist.y_test == held_out],
                         f"MNIST without the digit {held_out}", f"test digits {held_out}",
                         "test digits of the other classes"),
        "omniglot": Setup(mnist, mnist.x_test, load_dataset("omniglot-lake28").x_test,
                          "all of MNIST", "Omniglot (lake28) test characters",
                          "MNIST test digits"),
    }


def scored_images(x: Tensor, n: int, anomalous: bool) -> Tensor:
    """The first ``n`` images of one side, binarized once (seed 0 for the normal side, 1 for
    the anomalous side). x: [N, x_dim] grey -> [n, x_dim] binary"""
    return torch.bernoulli(x[:n], generator=torch.Generator().manual_seed(int(anomalous)))
