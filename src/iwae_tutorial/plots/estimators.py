"""Figures of the chapters on gradient estimators and on power-mean bounds: SNR against k
(log-log, with fitted slopes), test NLL per estimator or per p, and bounds against p.

Colours come from :mod:`iwae_tutorial.plots.style`: one per estimator (IWAE blue, STL
purple, DReG brown, ...); the power bounds, ordered by p, from its sequence colour map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..snr import fit_slope
from . import style
from ._util import finish, get_axes

__all__ = ["plot_snr", "plot_snr_pair", "plot_values", "power_colors"]


def plot_snr(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], ax: Axes | None = None,
             title: str | None = None, k_min: int = 10, floor: float = 0.0) -> Figure:
    """SNR against k on log-log axes, one line per estimator (label -> (ks, snr)), each with
    its least-squares slope over k >= ``k_min`` in the legend. Values at or below ``floor``
    (what the number of draws cannot tell from zero) are left out of the slope and drawn
    hollow, at the floor, on a grey band; dotted guides show slopes -1/2 and +1/2."""
    ax = get_axes(ax, (6, 4))
    ax.set_xscale("log")
    ax.set_yscale("log")
    for label, (ks, values) in curves.items():
        ks_, vals = np.asarray(ks, float), np.asarray(values, float)
        color = style.model_color(label, style.OTHER)
        try:
            slope = f" (slope {fit_slope(ks_, vals, k_min, floor):+.2f})"
        except ValueError:
            slope = ""
        ok = vals > floor
        ax.plot(ks_, np.where(ok, vals, max(floor, 1e-12)), "-", color=color, alpha=0.5)
        ax.plot(ks_[ok], vals[ok], "o", color=color, label=label + slope)
        if floor > 0 and (~ok).any():
            ax.plot(ks_[~ok], np.full((~ok).sum(), floor), "o", mfc="none", color=color)
    lo, hi = ax.get_xlim()
    k0 = np.array([max(lo, 1.0), hi])
    y0 = np.exp(np.mean(np.log(ax.get_ylim())))
    k_mid = np.sqrt(k0[0] * k0[1])
    for s in (-0.5, 0.5):  # guides through the middle of the plot
        ax.plot(k0, y0 * (k0 / k_mid) ** s, ":", color=style.REFERENCE, lw=0.8)
    if floor > 0:  # the band below the floor, down to the bottom of the axes
        bottom, top = ax.get_ylim()
        bottom = min(bottom, 0.5 * floor)
        ax.axhspan(bottom, floor, color=style.DATA, zorder=0)
        ax.set_ylim(bottom, top)
    return finish(ax, "k (samples per data point)", "SNR = |E g| / std g", title)


def plot_snr_pair(curves: Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[float]]]],
                  title: str | None = None, k_min: int = 10, floor: float = 0.0,
                  figsize: tuple[float, float] = (7, 3.3)) -> Figure:
    """The encoder's and the decoder's SNR side by side (:func:`plot_snr` each), sized for the
    book's column. curves: {"encoder": {label: (ks, snr)}, "decoder": {...}}."""
    fig, axes = plt.subplots(1, len(curves), figsize=figsize)
    for ax, (net, c) in zip(np.atleast_1d(axes), curves.items()):
        plot_snr(c, ax=ax, title=f"the {net}'s gradient", k_min=k_min, floor=floor)
        ax.title.set_fontsize(10)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def power_colors(ps: Sequence[float]) -> dict[float, str]:
    """One colour per p of the power bounds: p = 0 is the VAE (its colour), p = 1 the IWAE
    (its colour); the others, in order, from the green-yellow end of the sequence colour map
    (away from the IWAE's blue)."""
    cmap = plt.get_cmap(style.SEQUENCE_CMAP)
    others = sorted(p for p in ps if p not in (0.0, 1.0))
    out = {p: cmap(0.45 + 0.5 * i / max(1, len(others) - 1)) for i, p in enumerate(others)}
    out.update({p: style.VAE if p == 0.0 else style.IWAE for p in ps if p in (0.0, 1.0)})
    return out


def plot_values(labels: Sequence[str], values: Sequence[float], errors: Sequence[float],
                colors: Sequence[str], ax: Axes | None = None, ylabel: str = "test NLL (nats)",
                title: str | None = None, reference: float | None = None) -> Figure:
    """One value per label as a dot with its error bar (differences of fractions of a nat
    read better as dots on a zoomed axis than as bars cut off at the bottom); ``reference``
    draws a horizontal line (e.g. 0, or the IWAE's value)."""
    ax = get_axes(ax, (7, 3.5))
    for i, (v, e, c) in enumerate(zip(values, errors, colors)):
        ax.errorbar([i], [v], yerr=[e], fmt="o", color=c, capsize=4, ms=7)
    if reference is not None:
        ax.axhline(reference, color=style.REFERENCE, lw=0.8, ls=":")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax.figure
