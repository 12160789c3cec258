"""The 1-D camel: p(x) = 0.5 N(-1, 0.5^2) + 0.5 N(1, 0.5^2), sampled and evaluated exactly."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

CAMEL_MEANS = (-1.0, 1.0)
CAMEL_STD = 0.5


def camel_sample(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Draw ``n`` samples from the camel mixture.

    Returns:
        Tensor ``[n, 1]`` (CPU, ``dtype``). Mean 0, standard deviation sqrt(1 + 0.25) ~ 1.118.
    """
    sign = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -1.0, 1.0)
    return (sign + CAMEL_STD * torch.randn(n, 1, generator=generator)).to(dtype)


def camel_log_prob(x: torch.Tensor) -> torch.Tensor:
    """Exact log-density of the camel mixture, computed in log space (logsumexp).

    Args:
        x: ``[n, 1]`` (or ``[..., 1]``) samples, or a 1-D ``[n]`` tensor of points.

    Returns:
        ``[n]`` (``[...]``) log p(x): a trailing event dimension of size 1 is summed out when
        ``x`` has 2 or more dimensions; a 1-D input gives one value per element.
    """
    if x.dim() >= 2 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    means = torch.tensor(CAMEL_MEANS, dtype=x.dtype, device=x.device)
    z = (x.unsqueeze(-1) - means) / CAMEL_STD
    log_comp = -0.5 * z.pow(2) - math.log(CAMEL_STD) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_comp, dim=-1) + math.log(0.5)


def _camel_log_prob_np(x: float) -> float:
    z = (np.asarray(CAMEL_MEANS) - x) / CAMEL_STD
    log_comp = -0.5 * z**2 - math.log(CAMEL_STD) - 0.5 * math.log(2 * math.pi) + math.log(0.5)
    m = float(log_comp.max())
    return m + math.log(float(np.exp(log_comp - m).sum()))


@functools.lru_cache(maxsize=1)
def camel_expected_log_prob() -> float:
    """E_p[log p(X)] of the camel, by numerical integration (scipy.integrate.quad): ~ -1.358.

    This is the best average test log-likelihood any model can reach (the KTH report's
    "true E[log p(X)] = -1.358"). It is the *negative* of :func:`camel_entropy`.
    """
    from scipy.integrate import quad

    def integrand(x: float) -> float:
        lp = _camel_log_prob_np(x)
        return math.exp(lp) * lp

    val, _ = quad(integrand, -12.0, 12.0, points=[-1.0, 0.0, 1.0], limit=200,
                  epsabs=1e-12, epsrel=1e-12)
    return float(val)


def camel_entropy() -> float:
    """Differential entropy H(p) = -E_p[log p(X)] of the camel, ~ +1.358 nats (positive)."""
    return -camel_expected_log_prob()


def camel_data(
    n_train: int, n_test: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproducible camel train and test sets.

    Args:
        n_train, n_test: numbers of samples.
        seed: seed of a fresh ``torch.Generator``; the same seed gives the same data.

    Returns:
        ``(x_train, x_test)``, float32 ``[n_train, 1]`` and ``[n_test, 1]``.
    """
    g = torch.Generator().manual_seed(seed)
    return camel_sample(n_train, generator=g), camel_sample(n_test, generator=g)
