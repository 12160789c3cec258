"""Everything the paper fixes: architectures, the Table 1 grid, the schedule's length, and its
published numbers (quoted with their source, never computed).

Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
(arXiv:1509.00519). Cells the project could not check against a copy of the paper's table
are marked unverified (``verified=False`` in :func:`paper_numbers`).
"""

from __future__ import annotations

from typing import Any

from .schedule import PAPER_EPOCHS

__all__ = ["CITATION", "ONE_LAYER", "TWO_LAYERS", "ARCHITECTURES", "TABLE1_KS",
           "TABLE1_OBJECTIVES", "PAPER_EPOCHS", "EVAL_K", "paper_numbers", "table1_grid"]

CITATION = ("Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR, "
            "arXiv:1509.00519")

#: the paper's architectures: per stochastic layer, hidden sizes then the latent size
ONE_LAYER: list[tuple[int, ...]] = [(200, 200, 50)]
TWO_LAYERS: list[tuple[int, ...]] = [(200, 200, 100), (100, 100, 50)]
ARCHITECTURES = {1: ONE_LAYER, 2: TWO_LAYERS}

TABLE1_KS = (1, 5, 50)
TABLE1_OBJECTIVES = ("vae", "iwae")
EVAL_K = 5000  # test log-likelihood by L_5000

# Table 1, test NLL in nats for k = 1, 5, 50.
_NLL = {
    "mnist": {("vae", 1): (86.76, 86.47, 86.35), ("iwae", 1): (86.76, 85.54, 84.78),
              ("vae", 2): (85.33, 85.01, 84.78), ("iwae", 2): (85.33, 83.89, 82.90)},
    "omniglot": {("vae", 1): (108.11, 107.62, 107.80), ("iwae", 1): (108.11, 106.12, 104.67),
                 ("vae", 2): (107.58, 106.31, 106.30), ("iwae", 2): (107.56, 104.79, 103.38)},
}
# Omniglot cells confirmed by Li & Turner (2016), whose VAE column is the paper's.
_OMNIGLOT_VERIFIED = {("vae", 1, 5), ("vae", 1, 50), ("vae", 2, 5), ("vae", 2, 50)}
# Active units on MNIST, per stochastic layer; not checked against a copy of the table.
_ACTIVE_UNITS = {("vae", 1): ([19], [20], [20]), ("iwae", 1): ([19], [22], [25]),
                 ("vae", 2): ([16, 5], [17, 5], [17, 5]),
                 ("iwae", 2): ([16, 5], [21, 5], [26, 7])}


def table1_grid() -> list[tuple[int, str, int]]:
    """The 12 cells of Table 1 as (stochastic layers, objective, k), in the paper's order."""
    return [(layers, objective, k) for layers in (1, 2) for objective in TABLE1_OBJECTIVES
            for k in TABLE1_KS]


def paper_numbers(dataset: str, objective: str, k: int, n_layers: int) -> dict[str, Any]:
    """The paper's test NLL (and active units, MNIST) of one configuration, with its source,
    whether the number was verified, and a note on how comparable it is to a run on
    ``dataset``."""
    out: dict[str, Any] = {"nll": None, "active_units": None, "source": None,
                           "verified": None, "comparable": False, "note": None}
    if k not in TABLE1_KS:
        out["note"] = "the paper reports k = 1, 5 and 50 only"
        return out
    i = TABLE1_KS.index(k)
    key = (objective, n_layers)
    if dataset == "mnist":
        out.update(nll=_NLL["mnist"].get(key, (None,) * 3)[i],
                   active_units=_ACTIVE_UNITS.get(key, (None,) * 3)[i],
                   source=f"{CITATION}, Table 1 (dynamically binarized MNIST); the active "
                          "units are from the same table and unverified",
                   verified=True, comparable=True,
                   note="comparable only when the run used the paper's protocol "
                        "(budget 'full')")
    elif dataset.startswith("omniglot"):
        verified = (objective, n_layers, k) in _OMNIGLOT_VERIFIED
        out.update(nll=_NLL["omniglot"].get(key, (None,) * 3)[i], verified=verified,
                   source=f"{CITATION}, Table 1 (Omniglot)" + (
                       "; confirmed by Li & Turner (2016)" if verified else
                       "; unverified (no copy of the table was found)"))
        if dataset == "omniglot-burda":
            out.update(comparable=True, note="the paper's split (chardata.mat); comparable "
                                             "only with budget 'full'")
        else:
            out["note"] = (f"{dataset} is a different Omniglot split from the paper's "
                           "(chardata.mat, 'omniglot-burda'): not directly comparable")
    else:
        out["note"] = f"the paper reports no number for {dataset}"
    return out
