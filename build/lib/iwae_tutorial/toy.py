"""Models whose answers are known: the linear Gaussian model, and 1-D latent models on a grid.

The linear Gaussian model
-------------------------

    p(z) = N(0, 1),   p(x | z) = N(a z + b, s^2)
    =>  p(x) = N(b, a^2 + s^2),   p(z | x) = N(m(x), v),
        v = 1 / (1 + a^2 / s^2),  m(x) = v a (x - b) / s^2.

:meth:`LinearGaussian.model` builds it as a package :class:`~iwae_tutorial.models.IWAE` (one
stochastic layer of size 1, no hidden units, Gaussian likelihood) whose weights are set by
hand, with a Gaussian q(z | x) = N(q_weight x + q_bias, exp(q_log_std)^2). Every bound the
package computes can then be compared with the exact log p(x), the exact ELBO and the exact
posterior.

1-D latent models on a grid
---------------------------
For a model with one stochastic layer of size 1 (the camel chapter), p(z | x) can be computed
on a grid of z by normalising p(z) p(x | z) numerically: :func:`posterior_on_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .bounds import elbo, iwae_bound, normalized_weights
from .models import IWAE

__all__ = [
    "LinearGaussian",
    "bound_estimates",
    "GradientCheck",
    "gradient_check",
    "posterior_on_grid",
    "q_on_grid",
    "kl_q_posterior_on_grid",
    "decoder_on_grid",
    "count_modes",
]

_LOG_2PI = math.log(2 * math.pi)


def _gaussian_log_pdf(x: Tensor, mean: float | Tensor, var: float | Tensor) -> Tensor:
    var = torch.as_tensor(var, dtype=x.dtype)
    return -0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)


@dataclass(frozen=True)
class LinearGaussian:
    """p(z) = N(0, 1), p(x | z) = N(a z + b, s^2): log p(x) and p(z | x) in closed form."""

    a: float = 1.5
    b: float = 0.3
    s: float = 0.7

    # ------------------------------------------------------------------ exact answers
    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) = log N(x; b, a^2 + s^2). x: [n, 1] -> [n]."""
        return _gaussian_log_pdf(x, self.b, self.a**2 + self.s**2).squeeze(-1)

    @property
    def posterior_var(self) -> float:
        """v = Var(z | x), the same for every x."""
        return 1.0 / (1.0 + self.a**2 / self.s**2)

    @property
    def posterior_weight(self) -> float:
        """m(x) = posterior_weight * x + posterior_bias."""
        return self.posterior_var * self.a / self.s**2

    @property
    def posterior_bias(self) -> float:
        return -self.posterior_weight * self.b

    def posterior(self, x: Tensor) -> tuple[Tensor, float]:
        """Mean and standard deviation of p(z | x). x: [n, 1] -> ([n], std)."""
        return (self.posterior_weight * x + self.posterior_bias).squeeze(-1), math.sqrt(
            self.posterior_var)

    def exact_elbo(self, x: Tensor, q_mean: Tensor | float, q_std: Tensor | float) -> Tensor:
        """The exact ELBO of q(z | x) = N(q_mean, q_std^2): log p(x) - KL(q || p(z | x)).

        x: [n, 1], q_mean and q_std broadcastable to [n] -> [n]
        """
        m, sd = self.posterior(x)
        q_mean = torch.as_tensor(q_mean, dtype=x.dtype)
        q_std = torch.as_tensor(q_std, dtype=x.dtype)
        kl = torch.log(sd / q_std) + (q_std**2 + (q_mean - m) ** 2) / (2 * sd**2) - 0.5
        return self.log_px(x) - kl

    # ------------------------------------------------------------------ as a package model
    def model(self, q_weight: float, q_bias: float, q_log_std: float,
              dtype: torch.dtype = torch.float64) -> IWAE:
        """The model as an ``IWAE(1, [(1,)], likelihood="gaussian")`` with hand-set weights.

        q(z | x) = N(q_weight * x + q_bias, exp(q_log_std)^2); the decoder is exactly
        p(x | z) = N(a z + b, s^2).
        """
        m = IWAE(1, [(1,)], likelihood="gaussian").to(dtype)
        enc, dec = m.encoder[0], m.decoder[-1]
        with torch.no_grad():
            enc.mean.weight.fill_(q_weight)
            enc.mean.bias.fill_(q_bias)
            enc.log_std.weight.zero_()
            enc.log_std.bias.fill_(q_log_std)
            dec.mean.weight.fill_(self.a)
            dec.mean.bias.fill_(self.b)
            dec.log_std.weight.zero_()
            dec.log_std.bias.fill_(math.log(self.s))
        return m

    def exact_model(self, dtype: torch.dtype = torch.float64) -> IWAE:
        """The model with q(z | x) = p(z | x): every log-weight equals log p(x)."""
        return self.model(self.posterior_weight, self.posterior_bias,
                          0.5 * math.log(self.posterior_var), dtype=dtype)

    def shifted_model(self, shift: float, std_scale: float,
                      dtype: torch.dtype = torch.float64) -> IWAE:
        """q(z | x) = N(m(x) + shift * sd, (std_scale * sd)^2), sd the posterior std:
        ``shift=0, std_scale=1`` is the exact posterior; the rest are worse approximations."""
        sd = math.sqrt(self.posterior_var)
        return self.model(self.posterior_weight, self.posterior_bias + shift * sd,
                          math.log(std_scale * sd), dtype=dtype)


# ---------------------------------------------------------------------- repeated estimates
@torch.no_grad()
def bound_estimates(
    model: IWAE,
    x: Tensor,
    ks: Sequence[int],
    n_rep: int,
    *,
    generator: torch.Generator | None = None,
    max_rows: int = 2_000_000,
) -> dict[int, dict[str, Tensor]]:
    """``n_rep`` independent estimates of L_k and of the k-sample ELBO at one data point.

    Each estimate draws its own k samples from q(z | x); for each k both bounds are computed
    from the same log-weights. x: [1, x_dim].

    Returns: ``{k: {"iwae": [n_rep], "elbo": [n_rep]}}`` (on the CPU).
    """
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"x must be one data point of shape [1, x_dim], got {tuple(x.shape)}")
    out: dict[int, dict[str, Tensor]] = {}
    for k in ks:
        per_call = max(1, max_rows // k)  # bound the memory of one call
        lk, el = [], []
        done = 0
        while done < n_rep:
            r = min(per_call, n_rep - done)
            log_w = model.log_weights(x.expand(r, -1), k, generator=generator)  # [k, r]
            lk.append(iwae_bound(log_w).cpu())
            el.append(elbo(log_w).cpu())
            done += r
        out[int(k)] = {"iwae": torch.cat(lk), "elbo": torch.cat(el)}
    return out


@dataclass
class GradientCheck:
    """Gradients of one draw of k samples, flattened over all parameters (``names`` in order).

    - ``grad_iwae``: autograd's gradient of L_k = log (1/k) sum_i w_i;
    - ``weighted``: sum_i w~_i grad log w_i, from the k per-sample gradients;
    - ``grad_elbo``: autograd's gradient of the k-sample ELBO (1/k) sum_i log w_i;
    - ``uniform``: (1/k) sum_i grad log w_i;
    - ``weights``: the normalised weights w~_i, [k].
    """

    names: list[str]
    grad_iwae: Tensor
    weighted: Tensor
    grad_elbo: Tensor
    uniform: Tensor
    weights: Tensor


def gradient_check(model: IWAE, x: Tensor, k: int,
                   generator: torch.Generator | None = None) -> GradientCheck:
    """Compute the gradient of L_k (and of the k-sample ELBO) at one data point two ways.

    The same reparameterisation noise is used for all of them, so the identities
    ``grad_iwae == weighted`` and ``grad_elbo == uniform`` hold to rounding error.
    x: [1, x_dim].
    """
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"x must be one data point of shape [1, x_dim], got {tuple(x.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    eps = [torch.randn(k, x.shape[0], d, dtype=x.dtype, device=x.device, generator=generator)
           for d in model.latent_dims]
    log_w = model.log_weights(x, k, eps=eps)[:, 0]  # [k]

    def flat_grad(scalar: Tensor) -> Tensor:
        grads = torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(grads, params)]).detach()

    per_sample = torch.stack([flat_grad(log_w[i]) for i in range(k)])  # [k, n_params]
    w = normalized_weights(log_w).detach()
    return GradientCheck(
        names=_flat_names(names, params),
        grad_iwae=flat_grad(iwae_bound(log_w)),
        weighted=(w[:, None] * per_sample).sum(0),
        grad_elbo=flat_grad(elbo(log_w)),
        uniform=per_sample.mean(0),
        weights=w,
    )


def _flat_names(names: list[str], params: list[Tensor]) -> list[str]:
    out = []
    for n, p in zip(names, params):
        if p.numel() == 1:
            out.append(n)
        else:
            out += [f"{n}[{i}]" for i in range(p.numel())]
    return out


# ---------------------------------------------------------------------- 1-D latents on a grid
def _check_1d_latent(model: IWAE) -> None:
    if model.latent_dims != [1]:
        raise ValueError(
            "grid computations need one stochastic layer with a 1-D latent, "
            f"got latent sizes {model.latent_dims}")


@torch.no_grad()
def posterior_on_grid(model: IWAE, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """The model's true posterior p(z | x) = p(z) p(x | z) / p(x) on a grid of z, by quadrature.

    The grid must be uniform and wide enough to hold the posterior mass (e.g. -4..4).

    x: [n, x_dim], z: [m] -> (density [m, n] that integrates to one over the grid,
    log p(x) [n] by the trapezoidal rule).
    """
    _check_1d_latent(model)
    dtype = next(model.parameters()).dtype
    x = x.to(model.device, dtype)
    z = z.to(model.device, dtype)
    hs = [z.view(-1, 1, 1).expand(len(z), x.shape[0], 1)]
    log_joint = model.log_joint(x, hs).double()  # [m, n]
    dz = float(z[1] - z[0])
    weights = torch.full((len(z), 1), dz, dtype=torch.float64, device=log_joint.device)
    weights[0] = weights[-1] = dz / 2  # trapezoidal rule
    log_px = torch.logsumexp(log_joint + weights.log(), dim=0)
    return torch.exp(log_joint - log_px).cpu(), log_px.cpu()


@torch.no_grad()
def q_on_grid(model: IWAE, x: Tensor, z: Tensor) -> Tensor:
    """The density of q(z | x) on a grid of z. x: [n, x_dim], z: [m] -> [m, n]."""
    _check_1d_latent(model)
    mean, std = model.encode(x.to(model.device))[0]  # [n, 1] each
    z = z.to(mean.device, mean.dtype).view(-1, 1)
    return torch.exp(_gaussian_log_pdf(z, mean.view(1, -1), std.view(1, -1) ** 2)).double().cpu()


@torch.no_grad()
def kl_q_posterior_on_grid(model: IWAE, x: Tensor, z: Tensor) -> Tensor:
    """KL(q(z | x) || p(z | x)) of a 1-D latent model, by quadrature on a uniform grid of z.

    It is the gap log p(x) - ELBO(x) between the model's evidence and its ELBO.
    x: [n, x_dim], z: [m] -> [n]
    """
    post, _ = posterior_on_grid(model, x, z)
    q = q_on_grid(model, x, z)
    dz = float(z[1] - z[0])
    tiny = torch.finfo(torch.float64).tiny
    integrand = torch.where(q > 0, q * (torch.log(q + tiny) - torch.log(post + tiny)),
                            torch.zeros_like(q))
    return integrand.sum(0) * dz


@torch.no_grad()
def decoder_on_grid(model: IWAE, z: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of a Gaussian decoder p(x | z) at each z of a grid.

    z: [m] -> (mean [m, x_dim], std [m, x_dim]), on the CPU.
    """
    _check_1d_latent(model)
    if model.likelihood != "gaussian":
        raise ValueError("decoder_on_grid needs a model with a Gaussian likelihood")
    dtype = next(model.parameters()).dtype
    mean, log_std = model.decoder[-1](z.to(model.device, dtype).view(-1, 1))
    return mean.cpu(), torch.exp(log_std).cpu()


def count_modes(density: Tensor, min_dip: float = 0.05) -> int:
    """The number of humps of a density sampled on a grid.

    Two neighbouring local maxima count as separate modes only when the density between them
    dips by more than ``min_dip`` (relative to the lower of the two peaks); a flat-topped
    single hump therefore counts once. density: [m] -> int.
    """
    d = density.detach().double().cpu().reshape(-1)
    if d.numel() < 3:
        raise ValueError("need a density on a grid of at least 3 points")
    inner = (d[1:-1] > d[:-2]) & (d[1:-1] >= d[2:])
    peaks = (torch.nonzero(inner).reshape(-1) + 1).tolist()
    if not peaks:  # monotone on the grid: its maximum is at an end
        return 1
    merged = [peaks[0]]
    for p in peaks[1:]:
        q = merged[-1]
        dip = float(d[q:p + 1].min())
        if dip < (1 - min_dip) * min(float(d[q]), float(d[p])):
            merged.append(p)
        elif d[p] > d[q]:
            merged[-1] = p
    return len(merged)
