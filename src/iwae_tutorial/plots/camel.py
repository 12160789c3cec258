"""Figures of chapter 2 (the camel): learned 1-D densities against the truth, what a 1-D
decoder does with its code, and the true posterior p(z | x) of a model against its
recognition network q(z | x). Colours come from :mod:`iwae_tutorial.plots.style`.

The numbers come from :func:`iwae_tutorial.evaluate.log_likelihood` (the model's density
by L_k), :func:`iwae_tutorial.data.camel_log_prob` (the truth) and
:func:`iwae_tutorial.toy.posterior_on_grid` / :func:`iwae_tutorial.toy.q_on_grid`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes

from . import style
from ._util import finish, get_axes
from ._util import to_numpy as _np

__all__ = ["plot_learned_densities", "plot_posterior_vs_q", "plot_decoder", "plot_bound_curves"]


def plot_learned_densities(
    x_grid: torch.Tensor,
    true_log_p: torch.Tensor,
    learned_log_p: Mapping[str, Sequence[torch.Tensor]],
    *,
    data: torch.Tensor | None = None,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """The true density and each model's density exp(log p(x)) on ``x_grid``.

    ``learned_log_p``: ``{label: [log density on x_grid, one per seed]}``; the first seed is
    drawn solid, the others thinner. ``data``: samples shown as a grey histogram. A label
    that is a key of :data:`iwae_tutorial.plots.style.MODEL_COLORS` ("VAE", "IWAE") gets its
    colour; any other label the next colour of the cycle.
    """
    ax = get_axes(ax, (7, 4))
    xg = _np(x_grid).reshape(-1)
    if data is not None:
        ax.hist(_np(data).reshape(-1), bins=80, density=True, color=style.DATA,
                label="training data")
    ax.plot(xg, np.exp(_np(true_log_p)), **style.TRUTH_LINE, label="true p(x)")
    for label, curves in learned_log_p.items():
        color = style.MODEL_COLORS.get(label)
        for i, lp in enumerate(curves):
            ax.plot(xg, np.exp(_np(lp)), color=color, lw=2 if i == 0 else 1,
                    alpha=1.0 if i == 0 else 0.5,
                    label=label if i == 0 else None)
    finish(ax, "x", "density", title, loc="upper right")
    return ax


def plot_posterior_vs_q(
    z: torch.Tensor,
    true_post: torch.Tensor,
    q: torch.Tensor,
    *,
    ax: Axes | None = None,
    title: str = "",
    color: str | None = None,
) -> Axes:
    """The model's true posterior p(z | x) (filled) and q(z | x) (line) on the grid ``z``."""
    ax = get_axes(ax, (5, 3.5))
    zg = _np(z).reshape(-1)
    ax.fill_between(zg, _np(true_post).reshape(-1), color=style.TRUTH_FILL, alpha=0.5,
                    label=r"true posterior $p_\theta(z\mid x)$")
    ax.plot(zg, _np(q).reshape(-1), color=color, lw=2, label=r"$q_\phi(z\mid x)$")
    finish(ax, "z", "density", title)
    return ax


def plot_decoder(
    z: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    ax: Axes | None = None,
    label: str = "",
    color: str | None = None,
) -> Axes:
    """What a 1-D decoder does with its code: the mean of p(x | z) against z, with a band of
    plus or minus one standard deviation (from :func:`iwae_tutorial.toy.decoder_on_grid`)."""
    ax = get_axes(ax, (5, 3.5))
    zg = _np(z).reshape(-1)
    m, s = _np(mean).reshape(-1), _np(std).reshape(-1)
    ax.fill_between(zg, m - s, m + s, color=color, alpha=0.2, lw=0)
    ax.plot(zg, m, color=color, lw=2, label=f"{label} mean of p(x | z), \u00b1 1 std".strip())
    ax.set_xlabel("z")
    ax.set_ylabel("x")
    ax.legend(fontsize=8)
    return ax


def plot_bound_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    window: int = 50,
    ax: Axes | None = None,
    title: str = "",
) -> Axes:
    """Each model's bound on its minibatches against the training step: the single values
    faint, their running mean over ``window`` steps drawn thick (``curves = {label: [bound
    per step]}``, e.g. from :func:`iwae_tutorial.train.train_step`). A label starting with a
    model kind ("VAE", "IWAE (L_20)") gets its colour. The y range follows the running means.
    """
    ax = get_axes(ax, (7, 3.5))
    lo, hi = np.inf, -np.inf
    for label, values in curves.items():
        v = np.asarray(values, dtype=float)
        color = style.model_color(label)
        steps = np.arange(1, len(v) + 1)
        w = max(1, min(window, len(v)))
        run = np.convolve(v, np.ones(w) / w, mode="valid")
        ax.plot(steps, v, color=color, alpha=0.15, lw=0.5)
        ax.plot(steps[w - 1:], run, color=color, lw=2, label=f"{label}, mean of {w} steps")
        lo, hi = min(lo, float(run.min())), max(hi, float(run.max()))
    if np.isfinite(lo) and hi > lo:
        pad = 0.15 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    finish(ax, "training step (one minibatch each)", "bound on the minibatch (nats)", title,
           loc="lower right")
    return ax
