"""A run's configuration and its name: which data, which model, which objective, how long.

:class:`RunConfig` is everything that defines one trained model; :func:`run_name` (its
``.name``) the one name of it, ``mnist-iwae-k5-1L-s0``; :func:`build_model` its seeded,
initialised model. Where runs live on disk is :mod:`iwae_tutorial.runs.store`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data import DATASETS, Dataset
from ..models import IWAE, bernoulli_output_bias
from ..objectives import objective_slug, parse_objective
from ..paper import ONE_LAYER, TWO_LAYERS
from ..schedule import Stage, burda_schedule, truncate_schedule
from ..seeding import stream_seed

__all__ = ["RunConfig", "run_name", "build_model", "layers_from_string"]


@dataclass
class RunConfig:
    """Everything that defines one trained model."""

    dataset: str = "mnist"
    objective: str = "iwae"  # a spec: "iwae", "power:p=2", "miwae:m=5" (objectives.py)
    k: int = 5
    layers: list[list[int]] = field(default_factory=lambda: [list(s) for s in ONE_LAYER])
    epochs: int | None = None  # None: the paper's full schedule (3,280 epochs)
    n_train: int | None = None  # None: the whole training set; else its first n_train images
    seed: int = 0
    batch_size: int = 20
    lr: float | None = None  # None: the paper's rates; else one constant rate (needs epochs)
    lr_scale: float = 1.0  # the paper's rates times this (larger batches; see schedule.py)

    def __post_init__(self) -> None:
        if not (isinstance(self.layers, (list, tuple)) and self.layers and all(
                isinstance(spec, (list, tuple)) and spec and all(_whole(s, 1) for s in spec)
                for spec in self.layers)):
            raise ValueError(f"layers must be lists of positive integers (hidden sizes then "
                             f"the latent size), got {self.layers!r}")
        self.layers = [[int(s) for s in spec] for spec in self.layers]
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {DATASETS}")
        for name, low, optional in (("k", 1, False), ("epochs", 1, True),
                                    ("n_train", 1, True), ("seed", 0, False),
                                    ("batch_size", 1, False)):
            value = getattr(self, name)
            if not (value is None and optional) and not _whole(value, low):
                raise ValueError(f"{name} must be an integer of at least {low}"
                                 f"{' (or null)' if optional else ''}, got {value!r}")
        if not isinstance(self.objective, str):
            raise ValueError(f"objective must be a name such as 'iwae', got {self.objective!r}")
        parse_objective(self.objective)  # one line naming a bad name or option
        if not 0 < self.lr_scale < float("inf"):
            raise ValueError(f"lr_scale must be a positive number, got {self.lr_scale}")
        if self.lr is not None:
            if not 0 < self.lr < float("inf"):
                raise ValueError(f"lr must be a positive number, got {self.lr}")
            if self.epochs is None:
                raise ValueError("a constant learning rate needs a number of epochs (--epochs "
                                 "N); without one the paper's schedule and rates are used")

    @property
    def name(self) -> str:
        """``mnist-iwae-k5-1L-s0`` (see :func:`run_name`)."""
        return run_name(self.dataset, self.objective, self.k, self.layers, self.seed)

    def schedule(self) -> list[Stage]:
        """The paper's schedule cut to ``epochs``, or ``epochs`` epochs at the constant ``lr``."""
        if self.lr is not None:
            return [Stage(self.epochs, self.lr * self.lr_scale)]
        s = burda_schedule(base_lr=1e-3 * self.lr_scale)
        return s if self.epochs is None else truncate_schedule(s, self.epochs)


def _whole(value: object, low: int) -> bool:
    """Whether ``value`` is an integer (not a bool, not a float) of at least ``low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low


def run_name(dataset: str, objective: str, k: int, layers: Any, seed: int) -> str:
    """The one name of a configuration: ``mnist-iwae-k5-1L-s0``; the objective as its slug
    (``power-p2``), and the layer sizes when they are not the paper's (``1L-200x200x10``)."""
    layers = [[int(v) for v in s] for s in layers]
    arch = f"{len(layers)}L"
    if layers not in ([list(s) for s in ONE_LAYER], [list(s) for s in TWO_LAYERS]):
        arch += "-" + "-".join("x".join(str(v) for v in s) for s in layers)
    return f"{dataset}-{objective_slug(objective)}-k{int(k)}-{arch}-s{int(seed)}"


def build_model(cfg: RunConfig, ds: Dataset, device: torch.device | str = "cpu") -> IWAE:
    """The seeded, initialised model of ``cfg`` (output bias from the training data)."""
    x_train = ds.x_train if cfg.n_train is None else ds.x_train[: cfg.n_train]
    bias = bernoulli_output_bias(x_train) if ds.likelihood == "bernoulli" else None
    torch.manual_seed(stream_seed(cfg.seed, "weights"))
    return IWAE(ds.x_dim, cfg.layers, likelihood=ds.likelihood, output_bias=bias).to(device)


def layers_from_string(text: str) -> list[list[int]]:
    """Parse "200,200,50" or "200,200,100;100,100,50" (or "1"/"2" for the paper's)."""
    text = text.strip()
    if text in ("1", "1L"):
        return [list(s) for s in ONE_LAYER]
    if text in ("2", "2L"):
        return [list(s) for s in TWO_LAYERS]
    try:
        layers = [[int(v) for v in part.split(",")] for part in text.split(";")]
    except ValueError:
        raise ValueError(
            f"cannot read layers {text!r}: write each stochastic layer as hidden sizes then the "
            "latent size, layers separated by ';', e.g. '200,200,100;100,100,50' (or 1 / 2)"
        ) from None
    return layers
