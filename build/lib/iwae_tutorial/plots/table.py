"""Figures of chapter 5 (density estimation): NLL against k next to the paper, learning
curves, and the histogram of Var_x E_q[h_j | x] that defines active units.

A model's colour says its kind (:mod:`iwae_tutorial.plots.style`: VAE orange, IWAE blue), its
marker the number of stochastic layers (one: circles, two: squares)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..evaluate import ACTIVE_UNITS_THRESHOLD
from ..results import KS, ROWS, table1_cells
from . import style
from ._util import get_axes

__all__ = ["plot_nll_vs_k", "plot_learning_curves", "plot_unit_variances"]

_MARKERS = {1: "o", 2: "s"}  # by the number of stochastic layers


def _style(objective: str, layers: int) -> tuple[str, str]:
    """(colour, marker) of a row: the colour of its model kind, the marker of its depth."""
    return (style.model_color(objective, style.OTHER), _MARKERS.get(int(layers), "."))


def plot_nll_vs_k(result: Mapping[str, Any], ax: Axes | None = None,
                  title: str | None = None) -> Figure:
    """Test NLL against k for each (model, layers) row: ours solid, the paper's dashed."""
    ax = get_axes(ax, (6.5, 4))
    cells = table1_cells(result)
    for obj, layers in ROWS:
        color, marker = _style(obj, layers)
        ks = [k for k in KS if (obj, layers, k) in cells]
        if not ks:
            continue
        ours = [cells[(obj, layers, k)]["nll"] for k in ks]
        label = f"{obj.upper()}, {layers} layer{'s' if layers > 1 else ''}"
        ax.plot(ks, ours, marker=marker, color=color, label=label,
                ls="-" if layers == 1 else "-.")
        paper = [cells[(obj, layers, k)].get("paper", {}).get("nll") for k in ks]
        if all(p is not None for p in paper):
            ax.plot(ks, paper, marker=marker, color=color, ls=":", alpha=0.5, mfc="none")
    ax.set_xscale("log")
    ax.set_xticks(list(KS), [str(k) for k in KS])
    ax.set_xlabel("k (samples per data point during training)")
    ax.set_ylabel("test NLL  $-L_{5000}$ (nats, lower is better)")
    ax.set_title(title or f"{result['dataset']}, budget {result['budget']} "
                          "(dotted, hollow: the paper)")
    ax.legend(fontsize=8)
    return ax.figure


def plot_learning_curves(result: Mapping[str, Any], ax: Axes | None = None) -> Figure:
    """The training bound per epoch of every configuration."""
    ax = get_axes(ax, (6.5, 4))
    for c in result["configurations"]:
        color, marker = _style(c["objective"], c["stochastic_layers"])
        y = c["train_bound_per_epoch"]
        alpha = {1: 0.35, 5: 0.65, 50: 1.0}.get(int(c["k"]), 1.0)
        ax.plot(np.arange(1, len(y) + 1), y, marker=marker, color=color, alpha=alpha,
                ms=3, label=c["name"])
    ax.set_xlabel("epoch")
    ax.set_ylabel("training bound (nats per image)")
    ax.set_title("learning curves (darker: larger k)")
    ax.legend(fontsize=6, ncol=2)
    return ax.figure


def plot_unit_variances(variances: Mapping[str, Sequence[Any]],
                        threshold: float = ACTIVE_UNITS_THRESHOLD,
                        ax: Axes | None = None) -> Figure:
    """Histogram of log10 Var_x E_q[h_j | x] over the units of each named model (all
    stochastic layers pooled), with the active-unit threshold. A name that starts with a model
    kind ("VAE k=50", "IWAE k=50") is drawn in that kind's colour."""
    ax = get_axes(ax, (6.5, 4))
    all_v = np.concatenate([np.concatenate([np.asarray(v, dtype=float) for v in layers])
                            for layers in variances.values()])
    lo = np.log10(max(all_v.min(), 1e-12))
    hi = np.log10(max(all_v.max(), 10 * threshold))
    bins = np.linspace(min(lo, np.log10(threshold) - 1), hi + 0.1, 40)
    for name, layers in variances.items():
        v = np.concatenate([np.asarray(x, dtype=float) for x in layers])
        ax.hist(np.log10(np.maximum(v, 1e-12)), bins=bins, histtype="step", lw=1.5, label=name,
                color=style.model_color(name))
    ax.axvline(np.log10(threshold), color=style.REFERENCE, ls="--", lw=1)
    ax.text(np.log10(threshold), ax.get_ylim()[1] * 0.95, f" threshold {threshold}",
            va="top", fontsize=8)
    ax.set_xlabel(r"$\log_{10}\ \mathrm{Var}_x\, E_q[h_j \mid x]$")
    ax.set_ylabel("units")
    ax.set_title("inactive units (left) and active units (right)")
    ax.legend(fontsize=8)
    return ax.figure
