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
