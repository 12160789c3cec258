"""Figures of the chapter on depth, latent size and binarization: active units per stochastic
layer, the unit variances of models with codes of different sizes, and train and test bounds
over the epochs of a training run.

Colours come from :mod:`iwae_tutorial.plots.style`: the VAE orange, the IWAE blue; what else
a figure tells apart (layers, train and test, the two binarizations) is told by hatching or
line style."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..evaluate import ACTIVE_UNITS_THRESHOLD
from . import style
from ._util import finish, get_axes

__all__ = ["plot_units_per_layer", "plot_variance_panels", "plot_train_test",
           "plot_generalisation_gap"]

HATCHES = ("", "//", "..")  # stochastic layers h1, h2, h3


def plot_units_per_layer(records: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Figure:
    """Active units of each stochastic layer, one group of bars per (depth, layer), one bar per
    model kind; each bar's outline is the layer's size (its number of units).

    records: result records with ``objective``, ``layers`` ([[hidden..., d_l] per layer]) and
    ``active_units`` ([count per layer])."""
    ax = get_axes(ax, (8, 4))
    kinds = sorted({r["objective"] for r in records}, key=("vae", "iwae").index)
    width = 0.8 / len(kinds)
    labels: list[str] = []
    for r in records:
        for level in range(len(r["layers"])):
            label = f"{len(r['layers'])}L: h{level + 1}"
            if label not in labels:
                labels.append(label)
    for r in records:
        color = style.model_color(r["objective"])
        j = kinds.index(r["objective"])
        for level, (sizes, active) in enumerate(zip(r["layers"], r["active_units"])):
            x = (labels.index(f"{len(r['layers'])}L: h{level + 1}")
                 + (j - (len(kinds) - 1) / 2) * width)
            ax.bar(x, sizes[-1], width * 0.9, fill=False, edgecolor=color, lw=1)
            ax.bar(x, active, width * 0.9, color=color, hatch=HATCHES[level % len(HATCHES)],
                   edgecolor=style.ON_DARK, label=r["objective"].upper() if level == 0 and
                   len(r["layers"]) == 1 else None)
            ax.text(x, active, str(active), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("active units (outline: the layer's size)")
    ax.legend(fontsize=8)
    return ax.figure


def plot_variance_panels(panels: Mapping[str, Mapping[str, Sequence[float]]],
                         threshold: float = ACTIVE_UNITS_THRESHOLD,
                         axes: Sequence[Axes] | None = None) -> Figure:
    """One histogram panel per entry of ``panels`` (title -> {model name -> unit variances
    Var_x E_q[h_j | x]}), on the same log10 bins, with the active-unit threshold dashed."""
    if axes is None:
        import matplotlib.pyplot as plt
        _, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharey=False)
        axes = np.atleast_1d(axes)
    all_v = np.concatenate([np.asarray(v, float) for p in panels.values() for v in p.values()])
    logs = np.log10(np.maximum(all_v, 1e-12))
    bins = np.linspace(min(logs.min(), np.log10(threshold) - 1), max(logs.max(), 0) + 0.1, 36)
    for ax, (title, models) in zip(axes, panels.items()):
        for name, v in models.items():
            ax.hist(np.log10(np.maximum(np.asarray(v, float), 1e-12)), bins=bins,
                    histtype="step", lw=1.5, color=style.model_color(name), label=name)
        ax.axvline(np.log10(threshold), color=style.REFERENCE, ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(r"$\log_{10}\ \mathrm{Var}_x\, E_q[h_j \mid x]$")
    axes[0].set_ylabel("units")
    axes[0].legend(fontsize=8)
    return axes[0].figure


def plot_train_test(models: Sequence[Mapping[str, Any]], ax: Axes | None = None,
                    title: str | None = None, skip: int = 0) -> Figure:
    """Train (solid) and test (dashed) bound of each model after every epoch.

    models: entries with ``objective``, ``k``, ``train_L_k`` and ``test_L_k`` ([epochs]);
    the first ``skip`` epochs are left out (the bound climbs steeply at first)."""
    ax = get_axes(ax, (6, 4))
    for m in models:
        color = style.model_color(m["objective"])
        epochs = np.arange(1, len(m["train_L_k"]) + 1)[skip:]
        name = f"{m['objective'].upper()} k={m['k']}"
        ax.plot(epochs, m["train_L_k"][skip:], "-", color=color, label=f"{name}, train")
        ax.plot(epochs, m["test_L_k"][skip:], "--", color=color, label=f"{name}, test")
    return finish(ax, "epoch", "bound (nats)", title)


def plot_generalisation_gap(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                            ax: Axes | None = None) -> Figure:
    """Train bound minus test bound after every epoch, one line per model of each run
    (label -> models, as for :func:`plot_train_test`; the first run's lines solid, the next
    dashed, then dotted): above zero the model does better on the images it was trained on."""
    ax = get_axes(ax, (6, 4))
    for ls, (label, models) in zip(("-", "--", ":"), runs.items()):
        for m in models:
            gap = np.asarray(m["train_L_k"]) - np.asarray(m["test_L_k"])
            ax.plot(np.arange(1, len(gap) + 1), gap, ls, color=style.model_color(m["objective"]),
                    label=f"{m['objective'].upper()} k={m['k']}, {label}")
    ax.axhline(0, color=style.REFERENCE, lw=0.8)
    return finish(ax, "epoch", "train minus test bound (nats)")
