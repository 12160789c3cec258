"""Figures of the chapter on reweighted wake-sleep and the IWAE's implicit posterior: the test
log-likelihood of several models per seed, the implicit posterior q_IW of sampling importance
resampling against the true posterior and q, and a distance against k.

The numbers come from :mod:`iwae_tutorial.implicit` and :mod:`iwae_tutorial.toy`; colours
from :mod:`iwae_tutorial.plots.style` (q_IW's values of k from its sequence colour map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from . import style
from ._util import finish, get_axes
from ._util import to_numpy as _np

__all__ = ["k_colors", "plot_ll_by_seed", "plot_implicit_q", "plot_distance_vs_k"]

#: markers of the data points in :func:`plot_distance_vs_k`, in order
_MARKERS = ("o", "s", "^", "D", "v")


def k_colors(ks: Sequence[int]) -> dict[int, tuple]:
    """One colour per k, in order, from the sequence colour map."""
    cmap = plt.get_cmap(style.SEQUENCE_CMAP)
    ks = sorted(int(k) for k in ks)
    return {k: cmap(0.85 * i / max(1, len(ks) - 1)) for i, k in enumerate(ks)}


def plot_ll_by_seed(values: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    seeds: Sequence[int], truth: Sequence[float], *, ax: Axes | None = None,
                    title: str = "") -> Axes:
    """Each model's test log-likelihood per seed, a dot with its standard error
    (``values = {label: (per-seed values, per-seed errors)}``, in the order of ``seeds``),
    side by side within each seed; the true density's score on the same test points is a
    short black bar. A label starting with a model kind gets its colour."""
    ax = get_axes(ax, (5, 3.5))
    n = len(values)
    width = 0.5
    for j, (label, (v, e)) in enumerate(values.items()):
        off = (j - (n - 1) / 2) * width / max(1, n - 1) if n > 1 else 0.0
        xs = np.arange(len(seeds)) + off
        ax.errorbar(xs, np.asarray(v, float), yerr=np.asarray(e, float), fmt="o", ms=6,
                    capsize=3, color=style.model_color(label, style.OTHER), label=label)
    for i, t in enumerate(truth):
        ax.plot([i - 0.4, i + 0.4], [t, t], color=style.TRUTH, lw=2,
                label="true density" if i == 0 else None)
    ax.set_xticks(range(len(seeds)), [str(s) for s in seeds])
    finish(ax, "seed", "test log-likelihood (nats)", title, legend_size=7)
    return ax


def plot_implicit_q(z: torch.Tensor, posterior: torch.Tensor, q: torch.Tensor,
                    density: torch.Tensor, samples: torch.Tensor | None = None, *, k: int,
                    color: object = None, ax: Axes | None = None, title: str = "") -> Axes:
    """At one data point: the true posterior (filled), the encoder's q (dashed, the IWAE's
    colour), q_IW's density for this k (a line) and a histogram of SIR draws from it.

    z, posterior, q, density: [m] on a uniform grid; samples: [n] draws of q_IW.
    """
    ax = get_axes(ax, (5, 3.5))
    zg = _np(z).reshape(-1)
    ax.fill_between(zg, _np(posterior).reshape(-1), color=style.TRUTH_FILL, alpha=0.5,
                    label=r"true posterior $p_\theta(z\mid x)$")
    if samples is not None:
        ax.hist(_np(samples).reshape(-1), bins=60, range=(zg[0], zg[-1]), density=True,
                color=color, alpha=0.35, label=f"SIR draws, k = {k}")
    ax.plot(zg, _np(q).reshape(-1), color=style.IWAE, lw=1.5, ls="--",
            label=r"$q_\phi(z\mid x)$")
    ax.plot(zg, _np(density).reshape(-1), color=color, lw=2,
            label=rf"$q_{{IW}}$, k = {k}")
    finish(ax, "z", "density", title, legend_size=6.5, loc="upper right", title_size=10)
    return ax


def plot_distance_vs_k(ks: Sequence[int], curves: Mapping[str, Sequence[float]], *,
                       ax: Axes | None = None, ylabel: str = "total variation",
                       title: str = "") -> Axes:
    """A distance against k on log-log axes, one line per label (e.g. per data point), with a
    dotted guide of slope -1 for comparison."""
    ax = get_axes(ax, (5, 3.5))
    ks_ = np.asarray(ks, float)
    for marker, (label, values) in zip(_MARKERS, curves.items()):
        ax.plot(ks_, np.asarray(values, float), marker=marker, color=style.OTHER, lw=1,
                label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = max(float(np.max(np.asarray(v, float))) for v in curves.values())
    ax.plot(ks_, top * ks_[0] / ks_, ":", color=style.REFERENCE, lw=0.8, label="1 / k")
    finish(ax, "k (samples per draw)", ylabel, title, legend_size=7, title_size=10)
    return ax
