"""The one data-set type the models train and are scored on, and :func:`load_dataset` by name.

The loaders below it (:mod:`.mnist`, :mod:`.omniglot`, :mod:`.camel`) read files into tensors;
this module turns them into a :class:`Dataset` (splits, binarization, likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .camel import camel_data
from .mnist import load_binarized_mnist, load_mnist
from .omniglot import load_omniglot

__all__ = ["DATASETS", "Dataset", "load_dataset"]

DATASETS = ("mnist", "binarized-mnist", "omniglot-lake28", "omniglot-burda", "camel")


@dataclass
class Dataset:
    """One data set as the models see it: train / valid / test splits, with its name
    (variants named explicitly), how it is binarized and which likelihood models it.

    ``x_*``: [n, x_dim] float32 (grey values in [0, 1] when ``binarize``); ``y_*``: [n] labels
    or None; ``x_valid`` is None when the data set has no validation split.
    """

    name: str
    x_train: Tensor  # [n_train, x_dim]
    x_test: Tensor  # [n_test, x_dim]
    binarize: bool  # binarize dynamically during training (grey values in [0, 1])
    likelihood: str  # "bernoulli" or "gaussian"
    y_test: Tensor | None = None
    x_valid: Tensor | None = None  # [n_valid, x_dim]
    y_train: Tensor | None = None
    y_valid: Tensor | None = None
    #: the test split is ordered by class (Larochelle's fixed binarization: all 0s first), so
    #: its first n images are not a sample of it; see ``evaluate.eval_images``
    test_by_class: bool = False

    @property
    def x_dim(self) -> int:
        return int(self.x_train.shape[1])


def load_dataset(name: str, root: str | None = None, download: bool = True,
                 seed: int = 0) -> Dataset:
    """Load one of :data:`DATASETS` (for the camel, ``seed`` fixes the sample)."""
    if name in ("mnist", "binarized-mnist"):
        d = (load_mnist(root=root, download=download) if name == "mnist"
             else load_binarized_mnist(root=root))
        return Dataset(name, d.x_train, d.x_test, name == "mnist", "bernoulli", d.y_test,
                       x_valid=d.x_valid, y_train=d.y_train, y_valid=d.y_valid,
                       test_by_class=name == "binarized-mnist")
    if name in ("omniglot-lake28", "omniglot-burda"):
        d = load_omniglot(root=root, variant=name.split("-")[1], download=download)
        return Dataset(name, d.x_train, d.x_test, True, "bernoulli", d.y_test,
                       y_train=d.y_train)
    if name == "camel":
        x_train, x_test = camel_data(n_train=10_000, n_test=2_000, seed=seed)
        return Dataset(name, x_train, x_test, False, "gaussian")
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
