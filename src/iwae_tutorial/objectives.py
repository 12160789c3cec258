"""Training objectives and gradient estimators.

An objective turns a model, a batch and ``k`` into two per-data-point tensors:

- ``surrogate: [batch]``: what autograd differentiates; its gradient is the estimator;
- ``bound: [batch]``: the value of the lower bound being maximised (for logging).

For the plain objectives the two are the same tensor. New estimators (DReG, power bounds, ...)
register themselves with :func:`register` and every caller (``fit``, the CLI, the fleet)
can use them by name without changes.

An objective is named by a *spec*: its name, then its options after a colon, e.g. ``"iwae"``,
``"power:p=2"``, ``"miwae:m=5"``, ``"ciwae:beta=0.05"`` (:func:`parse_objective`); run names
use its slug (``"power-p2"``, :func:`objective_slug`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .bounds import elbo, iwae_bound, normalized_weights, power_bound
from .models import IWAE, gaussian_log_prob

__all__ = ["ObjectiveRecord", "REGISTRY", "OBJECTIVES", "register", "loss", "loss_and_bound",
           "get_objective", "parse_objective", "objective_slug", "log_w_objective",
           "fleet_objectives", "samples_per_point", "miwae_bound", "ciwae_bound",
           "rws_objective", "log_q_at"]

Objective = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ObjectiveRecord:
    """Everything the package knows about one objective, in one place.

    - ``fn(model, x, k, **options, **kw) -> (surrogate: [batch], bound: [batch])``;
    - ``options``: its options with their defaults (a default's type is the option's type),
      ``ranges``: the closed interval each option must lie in (ints are at least 1);
    - ``log_w``: the objective as a function of the log-weights alone,
      ``log_w: [n, batch] -> [batch]`` with the options as keywords, when there is one (the
      fleet trainers can run it); None for estimators that change the gradient's path;
    - ``groups``: the option that multiplies the samples per data point (MIWAE's ``m``).
    """

    name: str
    fn: Objective
    options: dict[str, float | int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    log_w: Callable[..., Tensor] | None = None
    groups: str | None = None

    def check(self, key: str, value: float | int, spec: str | None = None) -> None:
        """ValueError (one line) when ``value`` is out of the option's range."""
        low, high = self.ranges.get(key, (1 if isinstance(self.options[key], int)
                                          else -math.inf, math.inf))
        if not (math.isfinite(value) and low <= value <= high):
            where = f"objective {spec!r}" if spec else self.name
            rng = (f"in [{low:g}, {high:g}]" if math.isfinite(high)
                   else f"at least {low:g}" if math.isfinite(low) else "finite")
            raise ValueError(f"{where}: {key} = {value} is out of range: {key} must be {rng}")


#: the one registry: objective name -> its record (:func:`register` adds to it)
REGISTRY: dict[str, ObjectiveRecord] = {}


class _Functions(MutableMapping):
    """``OBJECTIVES``: the registry seen as name -> ``fn`` (setting a name registers a plain
    objective with no options; deleting one unregisters it)."""

    def __getitem__(self, name: str) -> Objective:
        return REGISTRY[name].fn

    def __setitem__(self, name: str, fn: Objective) -> None:
        REGISTRY[name] = ObjectiveRecord(name, fn)

    def __delitem__(self, name: str) -> None:
        del REGISTRY[name]

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


OBJECTIVES: MutableMapping[str, Objective] = _Functions()


def register(name: str, *, options: dict[str, float | int] | None = None,
             ranges: dict[str, tuple[float, float]] | None = None,
             log_w: Callable[..., Tensor] | None = None,
             groups: str | None = None) -> Callable[[Objective], Objective]:
    """Decorator: make ``fn(model, x, k, **kwargs) -> (surrogate, bound)`` available by name,
    with its record (:class:`ObjectiveRecord`)."""

    def deco(fn: Objective) -> Objective:
        REGISTRY[name] = ObjectiveRecord(name, fn, dict(options or {}), dict(ranges or {}),
                                         log_w, groups)
        return fn

    return deco


def _groups(log_w: Tensor, m: int) -> Tensor:
    """log_w: [m * k, batch] -> [m, k, batch] (m groups of k samples)."""
    if log_w.shape[0] % m:
        raise ValueError(f"{log_w.shape[0]} samples do not split into m = {m} groups")
    return log_w.view(m, log_w.shape[0] // m, *log_w.shape[1:])


def miwae_bound(log_w: Tensor, m: int = 1) -> Tensor:
    """The mean of the m bounds L_k of m groups of k samples. log_w: [m * k, batch] -> [batch]"""
    return iwae_bound(_groups(log_w, m), dim=1).mean(0)


def ciwae_bound(log_w: Tensor, beta: float = 0.5) -> Tensor:
    """beta * ELBO + (1 - beta) * L_k on the same samples. log_w: [k, batch] -> [batch]"""
    REGISTRY["ciwae"].check("beta", beta)  # its range is declared once, in the registry
    return beta * elbo(log_w) + (1.0 - beta) * iwae_bound(log_w)


def parse_objective(spec: str) -> tuple[str, dict[str, float | int]]:
    """``"power:p=2"`` -> ``("power", {"p": 2.0})``; ``"iwae"`` -> ``("iwae", {})``; options
    not given take their defaults (``"power"`` -> ``("power", {"p": 0.5})``).

    Raises ValueError with one line naming what is wrong and how to write it.
    """
    name, _, rest = str(spec).partition(":")
    name = name.strip()
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(REGISTRY)} "
                         "(options after a colon, e.g. power:p=2, miwae:m=5, ciwae:beta=0.05)")
    record = REGISTRY[name]
    allowed = record.options
    opts: dict[str, float | int] = dict(allowed)
    for item in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, value = (t.strip() for t in item.partition("="))
        example = (f"{name}:{next(iter(allowed))}=VALUE" if allowed else name)
        if key not in allowed or not eq:
            raise ValueError(f"objective {spec!r}: {name} takes "
                             f"{sorted(allowed) or 'no options'}; write e.g. {example}")
        try:
            opts[key] = type(allowed[key])(value)
        except ValueError:
            raise ValueError(f"objective {spec!r}: {key} must be a "
                             f"{type(allowed[key]).__name__}, got {value!r}") from None
        record.check(key, opts[key], spec)
    return name, opts


def objective_slug(spec: str) -> str:
    """A file-name-safe form of a spec: ``"power:p=2"`` -> ``"power-p2"``, ``"iwae"`` -> itself."""
    name, opts = parse_objective(spec)
    return "-".join([name, *(f"{k}{v:g}" for k, v in opts.items())])


def fleet_objectives() -> list[str]:
    """The objectives the fleet trainers can run (those with a log-weights form)."""
    return sorted(n for n, r in REGISTRY.items() if r.log_w is not None)


def log_w_objective(spec: str) -> Callable[[Tensor], Tensor]:
    """The spec as a function ``log_w: [n, batch] -> [batch]`` (ValueError for estimators
    such as ``dreg``, ``stl`` and ``piwae`` that need more than the log-weights)."""
    name, opts = parse_objective(spec)
    fn = REGISTRY[name].log_w
    if fn is None:
        raise ValueError(f"{name} is not a function of the log-weights alone (it changes the "
                         f"gradient's path); the fleet trains {fleet_objectives()}; "
                         "train it with train.fit")
    return functools.partial(fn, **opts) if opts else fn


def samples_per_point(spec: str, k: int) -> int:
    """How many samples per data point the objective draws: m * k for MIWAE/PIWAE, else k."""
    name, opts = parse_objective(spec)
    groups = REGISTRY[name].groups
    return int(k) * int(opts[groups]) if groups else int(k)


@register("vae", log_w=elbo)
def vae_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """The k-sample VAE bound: mean over samples of log w (the "minibatch ELBO")."""
    b = elbo(model.log_weights(x, k, **kw))
    return b, b


@register("iwae", log_w=iwae_bound)
def iwae_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """The IWAE bound L_k = log-mean-exp of the k log-weights."""
    b = iwae_bound(model.log_weights(x, k, **kw))
    return b, b


@register("power", options={"p": 0.5}, log_w=power_bound)
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


@register("miwae", options={"m": 1}, log_w=miwae_bound, groups="m")
def miwae_objective(model: IWAE, x: Tensor, k: int, m: int = 1,
                    **kw) -> tuple[Tensor, Tensor]:
    """MIWAE(m, k) (Rainforth et al., 2018): m independent groups of k samples, the mean of
    their m bounds L_k. m = 1 is the IWAE bound L_k; k = 1 is the m-sample ELBO.

    Draws m * k samples. x: [batch, x_dim] -> (surrogate, bound): [batch] each
    """
    b = miwae_bound(model.log_weights(x, m * k, **kw), m)
    return b, b


@register("ciwae", options={"beta": 0.5}, ranges={"beta": (0.0, 1.0)},
          log_w=ciwae_bound)
def ciwae_objective(model: IWAE, x: Tensor, k: int, beta: float = 0.5,
                    **kw) -> tuple[Tensor, Tensor]:
    """CIWAE (Rainforth et al., 2018): beta * ELBO + (1 - beta) * L_k, both on the same k
    samples. beta = 0 is the IWAE bound, beta = 1 the k-sample ELBO.

    x: [batch, x_dim] -> (surrogate, bound): [batch] each
    """
    b = ciwae_bound(model.log_weights(x, k, **kw), beta)
    return b, b


def log_q_at(model: IWAE, x: Tensor, hs: Sequence[Tensor]) -> Tensor:
    """log q(h_1 .. h_L | x) of given samples: the encoder's density evaluated at ``hs``, which
    a gradient then reaches only through q's parameters (pass detached samples).

    x: [batch, x_dim], hs: [[k, batch, d_l] per layer] -> [k, batch]
    """
    log_q = x.new_zeros(hs[0].shape[:2])
    inp = x
    for q, h in zip(model.encoder, hs):
        mean, log_std = q(inp)  # q(h_l | h_{l-1}): [batch, d_l] or [k, batch, d_l]
        log_q = log_q + gaussian_log_prob(h, mean, log_std)
        inp = h
    return log_q


@register("rws")
def rws_objective(model: IWAE, x: Tensor, k: int, **kw) -> tuple[Tensor, Tensor]:
    """Reweighted wake-sleep (Bornschein & Bengio, 2015), wake phase for both networks:
    decoder gradient sum_i w~_i grad log p(x, h_i) (the IWAE's), encoder gradient
    sum_i w~_i grad log q(h_i | x) with the samples h_i held fixed (no reparameterisation).
    The weights are constants; the bound reported is L_k.

    x: [batch, x_dim] -> (surrogate, bound): [batch] each
    """
    hs, _ = model.sample_q(x, k, **kw)
    hs = [h.detach() for h in hs]  # the samples: no gradient flows through them
    log_p = model.log_joint(x, hs)  # [k, batch]; depends on the decoder only
    log_q = log_q_at(model, x, hs)  # [k, batch]; depends on the encoder only
    w = normalized_weights(log_p - log_q).detach()  # w~_i, constants
    surrogate = (w * (log_p + log_q)).sum(0)
    return surrogate, iwae_bound((log_p - log_q).detach())


@register("piwae", options={"m": 1}, groups="m")
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
    surrogate = bound + miwae_bound(log_w_phi, m)
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
    """Look an objective up by spec (``"iwae"``, ``"power:p=2"``; options bound as keywords),
    or pass a callable through."""
    if callable(objective):
        return objective
    name, opts = parse_objective(objective)
    fn = OBJECTIVES[name]
    return functools.partial(fn, **opts) if opts else fn


def loss_and_bound(model: IWAE, x: Tensor, k: int, objective: str | Objective = "iwae",
                   **kwargs) -> tuple[Tensor, Tensor]:
    """(loss to minimise: scalar, batch mean of the bound: scalar, detached)."""
    surrogate, bound = get_objective(objective)(model, x, k, **kwargs)
    return -surrogate.mean(), bound.detach().mean()


def loss(model: IWAE, x: Tensor, k: int, objective: str | Objective = "iwae",
         **kwargs) -> Tensor:
    """The batch-averaged negative objective, to minimise. x: [batch, x_dim] -> scalar."""
    return loss_and_bound(model, x, k, objective, **kwargs)[0]
