"""One configuration: which data, which model, which objective, how long.

:class:`RunConfig` names a trained model; :func:`load_dataset` gives its data and
:func:`build_model` its seeded, initialised model. Training one into a run directory and
reading it back are :mod:`iwae_tutorial.runs`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .data import DATASETS, Dataset, load_dataset
from .models import IWAE, bernoulli_output_bias
from .objectives import parse_objective
from .paper import ONE_LAYER, TWO_LAYERS
from .results import run_name
from .schedule import Stage, burda_schedule, truncate_schedule
from .seeding import stream_seed

__all__ = ["RunConfig", "Dataset", "load_dataset", "build_model", "DATASETS", "ONE_LAYER",
           "TWO_LAYERS", "layers_from_string", "eval_images", "eval_indices", "eval_subset_text"]


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
        """``mnist-iwae-k5-1L-s0`` (see :func:`iwae_tutorial.results.run_name`)."""
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


def eval_indices(ds: Dataset, n: int | None = None) -> Tensor:
    """Which test images a score on ``n`` of them uses: the first ``n``, or, when the test
    split is ordered by class (``ds.test_by_class``), ``n`` evenly spaced ones (every class in
    its share). -> [n] indices"""
    total = ds.x_test.shape[0]
    n = total if n is None else min(int(n), total)
    if ds.test_by_class and n < total:
        return torch.div(torch.arange(n) * total, n, rounding_mode="floor")
    return torch.arange(n)


def eval_subset_text(ds: Dataset, n: int | None = None) -> str:
    """How :func:`eval_indices` chose the images, in words."""
    total = ds.x_test.shape[0]
    n = total if n is None else min(int(n), total)
    if n == total:
        return "all test images"
    if ds.test_by_class:
        return (f"{n} evenly spaced of the {total} test images (the test split is ordered by "
                "class)")
    return f"the first {n} of the {total} test images"


def eval_images(ds: Dataset, n: int | None = None, seed: int = 0) -> Tensor:
    """The ``n`` test images of :func:`eval_indices` as they are scored: binarized once with a
    fixed seed (a CPU generator) when the data set is binarized during training, as in the
    authors' code.

    -> [n, x_dim] on the CPU
    """
    x = ds.x_test if n is None else ds.x_test[eval_indices(ds, n)]
    if ds.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


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
