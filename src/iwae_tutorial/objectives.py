"""Training objectives and gradient estimators.

An objective turns a model, a batch and ``k`` into two per-data-point tensors:

- ``surrogate: [batch]``: what autograd differentiates; its gradient is the estimator;
- ``bound: [batch]``: the value of the lower bound being maximised (for logging).

For the plain objectives the two are the same tensor. New estimators (DReG, power bounds, ...)
register themselves with :func:`register` and every caller (``fit``, the CLI, the fleet)
can use them by name without changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .bounds import elbo, iwae_bound, normalized_weights, power_bound
from .models import IWAE

__all__ = ["OBJECTIVES", "register", "loss", "loss_and_bound", "get_objective",
           "LOG_W_OBJECTIVES"]

Objective = Callable[..., tuple[Tensor, Tensor]]
OBJECTIVES: dict[str, Objective] = {}

#: objectives that are a plain function of the log-weights, ``log_w: [k, batch] -> [batch]``
#: (usable by code that computes log_w itself, such as the fleet trainer).
LOG_W_OBJECTIVES: dict[str, Callable[[Tensor], Tensor]] = {"vae": elbo, "iwae": iwae_bound}


def register(name: str) -> Callable[[Objective], Objective]:
    """Decorator: make ``fn(model, x, k, **kwargs) -> (surrogate, bound)`` available by name."""

    def deco(fn: Objective) -> Objective:
        OBJECTIVES[name] = fn
        return fn

    return deco


@register("vae")
def vae_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """The k-sample VAE bound: mean over samples of log w (the "minibatch ELBO")."""
    b = elbo(model.log_weights(x, k, **kw))
    return b, b


@register("iwae")
def iwae_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """The IWAE bound L_k = log-mean-exp of the k log-weights."""
    b = iwae_bound(model.log_weights(x, k, **kw))
    return b, b


@register("power")
def power_objective(model: IWAE, x: Tensor, k: int, p: float = 0.5,
                    **kw) -> tuple[Tensor, Tensor]:
    """The power bound log ((1/k) sum w^p)^(1/p): between the ELBO (p -> 0) and L_k (p = 1)."""
    b = power_bound(model.log_weights(x, k, **kw), p)
    return b, b


@register("dreg")
def dreg_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """IWAE bound with the doubly reparameterised gradient of Tucker et al. (2018).

    Encoder gradient: sum_i w~_i^2 d log w_i / d phi through the samples only (log q with
    its parameters held fixed); decoder gradient: sum_i w~_i d log w_i / d theta (unchanged).
    Written as one surrogate: its phi-gradient comes from the first term (the second has no
    phi dependence) and its theta-gradients add up to w~^2 + (w~ - w~^2) = w~.
    """
    hs, log_q_fixed = model.sample_q(x, k, detach_q=True, **kw)
    log_w = model.log_joint(x, hs) - log_q_fixed  # [k, batch]; same value as log_w
    w = normalized_weights(log_w).detach()
    log_p_theta = model.log_joint(x, [h.detach() for h in hs])  # theta only
    surrogate = (w.pow(2) * log_w).sum(0) + ((w - w.pow(2)) * log_p_theta).sum(0)
    return surrogate, iwae_bound(log_w.detach())


@register("stl")
def stl_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """"Sticking the landing" (Roeder et al., 2017) applied to L_k: the score term of q is
    dropped by evaluating log q with q's parameters held fixed (the samples keep their
    reparameterised path). Its encoder gradient is sum_i w~_i d log w_i / d phi through the
    samples only: for k = 1 unbiased, for k > 1 biased (Tucker et al., 2018, who fix it with
    DReG's squared weights); the decoder gradient is L_k's.

    x: [batch, x_dim] -> (surrogate: [batch], bound: [batch])
    """
    b = iwae_bound(model.log_weights(x, k, detach_q=True, **kw))
    return b, b.detach()


def _groups(log_w: Tensor, m: int) -> Tensor:
    """log_w: [m * k, batch] -> [m, k, batch] (m groups of k samples)."""
    if log_w.shape[0] % m:
        raise ValueError(f"{log_w.shape[0]} samples do not split into m = {m} groups")
    return log_w.view(m, log_w.shape[0] // m, *log_w.shape[1:])


@register("miwae")
def miwae_objective(model: IWAE, x: Tensor, k: int, m: int = 1,
                    **kw) -> tuple[Tensor, Tensor]:
    """MIWAE(m, k) (Rainforth et al., 2018): m independent groups of k samples, the mean of
    their m bounds L_k. m = 1 is the IWAE bound L_k; k = 1 is the m-sample ELBO.

    Draws m * k samples. x: [batch, x_dim] -> (surrogate, bound): [batch] each
    """
    b = iwae_bound(_groups(model.log_weights(x, m * k, **kw), m), dim=1).mean(0)
    return b, b


@register("ciwae")
def ciwae_objective(model: IWAE, x: Tensor, k: int, beta: float = 0.5,
                    **kw) -> tuple[Tensor, Tensor]:
    """CIWAE (Rainforth et al., 2018): beta * ELBO + (1 - beta) * L_k, both on the same k
    samples. beta = 0 is the IWAE bound, beta = 1 the k-sample ELBO.

    x: [batch, x_dim] -> (surrogate, bound): [batch] each
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"ciwae: beta must be in [0, 1], got {beta}")
    log_w = model.log_weights(x, k, **kw)
    b = beta * elbo(log_w) + (1.0 - beta) * iwae_bound(log_w)
    return b, b


@register("piwae")
def piwae_objective(model: IWAE, x: Tensor, k: int, m: int = 1,
                    generator: torch.Generator | None = None,
                    eps: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """PIWAE (Rainforth et al., 2018): one set of m * k samples; the decoder (theta) follows
    the IWAE bound L_{mk} of all of them, the encoder (phi) follows MIWAE(m, k).

    The surrogate L_{mk}(theta; phi held fixed) + MIWAE(phi; theta held fixed) has exactly
    these two gradients: each term is computed, with the same noise, with the other network's
    parameters detached. The bound reported is L_{mk}.
    x: [batch, x_dim] -> (surrogate, bound): [batch] each
    """
    n = m * k
    if eps is None:
        eps = [torch.randn(n, x.shape[0], d, device=x.device, dtype=x.dtype,
                           generator=generator) for d in model.latent_dims]
    log_w_theta = _log_weights_holding(model, "encoder", x, n, eps)  # for theta's gradient
    log_w_phi = _log_weights_holding(model, "decoder", x, n, eps)  # for phi's gradient
    bound = iwae_bound(log_w_theta)
    surrogate = bound + iwae_bound(_groups(log_w_phi, m), dim=1).mean(0)
    return surrogate, bound.detach()


def _log_weights_holding(model: IWAE, frozen: str, x: Tensor, k: int,
                         eps: list[Tensor]) -> Tensor:
    """``model.log_weights(x, k, eps=eps)`` with the parameters whose names start with
    ``frozen`` ("encoder" or "decoder") held fixed (detached)."""
    params = {f"model.{name}": (t.detach() if name.startswith(frozen) else t)
              for name, t in model.named_parameters()}
    return torch.func.functional_call(_LogWeights(model), params, (x, k, eps))


class _LogWeights(torch.nn.Module):
    """A module whose forward is ``model.log_weights`` (for ``torch.func.functional_call``)."""

    def __init__(self, model: IWAE):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, k: int, eps: list[Tensor]) -> Tensor:
        return self.model.log_weights(x, k, eps=eps)


def get_objective(objective: str | Objective) -> Objective:
    """Look an objective up by name (or pass a callable through)."""
    if callable(objective):
        return objective
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(
            f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)}"
        ) from None


def loss_and_bound(model: IWAE, x: Tensor, k: int, objective: str | Objective = "iwae",
                   **kwargs) -> tuple[Tensor, Tensor]:
    """(loss to minimise: scalar, batch mean of the bound: scalar, detached)."""
    surrogate, bound = get_objective(objective)(model, x, k, **kwargs)
    return -surrogate.mean(), bound.detach().mean()


def loss(model: IWAE, x: Tensor, k: int, objective: str | Objective = "iwae",
         **kwargs) -> Tensor:
    """The batch-averaged negative objective, to minimise. x: [batch, x_dim] -> scalar."""
    return loss_and_bound(model, x, k, objective, **kwargs)[0]
