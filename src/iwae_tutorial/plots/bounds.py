"""Figures of chapter 1 (from the ELBO to the IWAE bound): bounds against k, their spread,
normalised importance weights and the gradient identity.

Every function draws on a given matplotlib ``Axes`` (or a new figure when ``ax`` is None) and
returns what it drew on; the numbers come from :mod:`iwae_tutorial.toy` and
:mod:`iwae_tutorial.bounds`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from . import style
from ._util import get_axes as _ax
from ._util import to_numpy as _np

__all__ = [
    "plot_bound_vs_k",
    "plot_bound_histograms",
    "plot_weights",
    "plot_densities_1d",
    "plot_gradient_check",
]


def plot_bound_vs_k(
    estimates: Mapping[int, Mapping[str, torch.Tensor]],
    log_px: float,
    *,
    exact_elbo: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Mean of the estimates of L_k (and of the k-sample ELBO) against k, on a log axis.

    The band is the 10%-90% range of the single estimates (their spread), the error bar on the
    mean is two standard errors. ``estimates``: ``{k: {"iwae": [n_rep], "elbo": [n_rep]}}``
    from :func:`iwae_tutorial.toy.bound_estimates`.
    """
    ax = _ax(ax)
    ks = np.array(sorted(estimates))
    for key, color, label in (("iwae", style.IWAE, r"$\mathcal{L}_k$ (IWAE bound)"),
                              ("elbo", style.VAE, "k-sample ELBO")):
        vals = [_np(estimates[k][key]) for k in ks]
        mean = np.array([v.mean() for v in vals])
        se = np.array([v.std(ddof=1) / np.sqrt(len(v)) for v in vals])
        lo = np.array([np.quantile(v, 0.1) for v in vals])
        hi = np.array([np.quantile(v, 0.9) for v in vals])
        ax.fill_between(ks, lo, hi, color=color, alpha=0.15, lw=0)
        ax.errorbar(ks, mean, yerr=2 * se, color=color, marker="o", ms=4, capsize=2,
                    label=f"{label}: mean, 10-90% band")
    ax.axhline(log_px, color=style.TRUTH, ls="--", lw=1.2, label=r"exact $\log p(x)$")
    if exact_elbo is not None:
        ax.axhline(exact_elbo, color=style.VAE, ls=":", lw=1.2, label="exact ELBO")
    ax.set_xscale("log")
    ax.set_xlabel("number of samples k")
    ax.set_ylabel("nats")
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_bound_histograms(
    estimates: Mapping[int, Mapping[str, torch.Tensor]],
    log_px: float,
    ks: Sequence[int] | None = None,
    *,
    key: str = "iwae",
    ax: Axes | None = None,
    xlim: tuple[float, float] | None = None,
    bins: int = 60,
) -> Axes:
    """Histograms of single estimates of one bound (``key``: "iwae" or "elbo") for several k,
    with the exact log p(x) as a dashed line.

    Bars are fractions of all the estimates of one k; estimates outside ``xlim`` are not drawn
    and their share is given in the legend.
    """
    ax = _ax(ax)
    ks = sorted(estimates) if ks is None else list(ks)
    allv = np.concatenate([_np(estimates[k][key]) for k in ks])
    if xlim is None:
        xlim = (float(np.quantile(allv, 0.005)), float(max(np.quantile(allv, 0.999), log_px)))
    edges = np.linspace(xlim[0], xlim[1], bins + 1)
    cmap = plt.get_cmap(style.SEQUENCE_CMAP)
    for i, k in enumerate(ks):
        v = _np(estimates[k][key])
        inside = (v >= xlim[0]) & (v <= xlim[1])
        # normalised over all estimates, so the mass outside the window is simply not drawn
        ax.hist(v[inside], bins=edges, weights=np.full(int(inside.sum()), 1 / len(v)),
                histtype="stepfilled", alpha=0.35, color=cmap(i / max(1, len(ks) - 1)),
                label=f"k = {k}" + _outside(1 - float(inside.mean())))
    ax.axvline(log_px, color=style.TRUTH, ls="--", lw=1.2, label=r"$\log p(x)$")
    ax.set_xlim(*xlim)
    ax.set_xlabel("single estimate (nats)")
    ax.set_ylabel("fraction of estimates per bin")
    ax.set_title(r"$\mathcal{L}_k$" if key == "iwae" else "k-sample ELBO")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def _outside(share: float) -> str:
    if share == 0:
        return ""
    return f" ({share:.0%} outside)" if share >= 0.005 else " (<1% outside)"


def plot_weights(weights: torch.Tensor, ess: float, *, ax: Axes | None = None,
                 title: str = "", color: str = style.IWAE) -> Axes:
    """The normalised weights w~_i of one draw of k samples, sorted, with 1/k for reference
    and the effective sample size in the title."""
    ax = _ax(ax)
    w = np.sort(_np(weights))[::-1]
    k = len(w)
    ax.bar(np.arange(1, k + 1), w, color=color, width=0.8)
    ax.axhline(1 / k, color=style.REFERENCE, ls="--", lw=1, label="1/k (all samples equal)")
    ax.set_xlabel("sample (sorted by weight)")
    ax.set_ylabel(r"normalised weight $\tilde w_i$")
    ax.set_title(f"{title}ESS = {ess:.1f} of k = {k}")
    ax.legend(fontsize=8)
    return ax


def plot_densities_1d(
    z: torch.Tensor,
    curves: Mapping[str, torch.Tensor],
    *,
    ax: Axes | None = None,
    styles: Mapping[str, Mapping] | None = None,
    xlabel: str = "z",
) -> Axes:
    """Several 1-D densities on one grid: ``curves = {label: density values on z}``."""
    ax = _ax(ax)
    styles = styles or {}
    for label, dens in curves.items():
        ax.plot(_np(z), _np(dens), label=label, **dict(styles.get(label, {})))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return ax


def plot_gradient_check(names: Sequence[str], grads: Mapping[str, torch.Tensor], *,
                        colors: Sequence[str | None] | None = None,
                        ax: Axes | None = None) -> Axes:
    """Grouped bars: one group per parameter, one bar per way of computing the gradient
    (``colors``: one per entry of ``grads``, in order; default: the colour cycle)."""
    ax = _ax(ax, figsize=(7, 3.5))
    n, m = len(names), len(grads)
    width = 0.8 / m
    x = np.arange(n)
    colors = list(colors) if colors is not None else [None] * m
    if len(colors) != m:
        raise ValueError(f"{m} gradients but {len(colors)} colours")
    for j, ((label, g), color) in enumerate(zip(grads.items(), colors)):
        ax.bar(x + (j - (m - 1) / 2) * width, _np(g), width=width, label=label, color=color)
    ax.axhline(0, color=style.REFERENCE, lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([s.replace(".weight", ".w").replace(".bias", ".b") for s in names],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("gradient")
    ax.legend(fontsize=8)
    return ax
