"""Figures of Table 1 stage by stage (:mod:`iwae_tutorial.stagewise`): the test NLL of every
cell against epochs, the paired IWAE - VAE differences, the active units.

One panel per number of stochastic layers, two panels a row; the VAE orange and the IWAE blue
(:mod:`.style`), k told apart by the marker and the line (k = 1 dotted, 5 dashed, 50 solid).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

from ..paper import PAPER_EPOCHS, TABLE1_KS
from ..stagewise import Z95, claims, paired_gap, series, stage_cells, stage_epochs
from . import style

__all__ = ["plot_convergence", "plot_paired_gaps", "plot_active_units",
           "plot_unit_variances_by_stage", "REPRODUCTIONS"]

_LINE = {1: ":", 5: "--", 50: "-"}
_MARK = {1: "s", 5: "^", 50: "o"}

#: the final test NLL of a public reproduction of the full schedule, quoted from its source
#: (nbip/IWAE, TensorFlow 2; see the references page): {(objective, layers, k): nats}
REPRODUCTIONS: dict[tuple[str, int, int], float] = {
    ("vae", 1, 1): 86.35, ("vae", 1, 5): 86.10, ("vae", 1, 50): 86.06,
    ("iwae", 1, 1): 86.35, ("iwae", 1, 5): 85.18, ("iwae", 1, 50): 84.59,
    ("vae", 2, 1): 84.83, ("vae", 2, 5): 84.08, ("vae", 2, 50): 83.89,
    ("iwae", 2, 1): 84.83, ("iwae", 2, 5): 83.48, ("iwae", 2, 50): 82.82,
}


def _color(objective: str) -> str:
    return style.IWAE if objective == "iwae" else style.VAE


def _panels(n: int = 2, height: float = 3.6) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(1, n, figsize=(7.0, height), squeeze=False)
    return fig, axes[0]


def plot_convergence(result: dict[str, Any]) -> Figure:
    """Top row: the test NLL (L_5000) of every cell after each scored stage, epochs on a log
    axis, with the cells' standard errors; at 3,280 epochs the paper's number (filled marker,
    and a thin dotted line across) and a public reproduction's final number (open marker).
    Bottom row: each cell's gap to the paper's number, on a log axis (a straight line is a
    power law in the epochs; gaps below 0.05 nats are drawn at 0.05)."""
    fig, grid = plt.subplots(2, 2, figsize=(7.0, 7.0), squeeze=False)
    ser = series(result)
    for col, layers in enumerate((1, 2)):
        ax, gx = grid[0][col], grid[1][col]
        for obj in ("vae", "iwae"):
            for k in TABLE1_KS:
                recs = ser.get((obj, layers, k))
                if not recs or (obj == "iwae" and k == 1):  # the k = 1 IWAE is the VAE
                    continue
                c = _color(obj)
                label = "VAE = IWAE, k = 1" if k == 1 else f"{obj.upper()}, k = {k}"
                xs = [r["epochs"] for r in recs]
                line = dict(color=c, ls=_LINE[k], marker=_MARK[k], ms=4, lw=1.3)
                ax.errorbar(xs, [r["nll"] for r in recs], yerr=[r["nll_stderr"] for r in recs],
                            capsize=2, label=label, **line)
                paper = recs[-1]["paper"]["nll"]
                if paper is not None:
                    ax.axhline(paper, color=c, lw=0.6, ls=":", alpha=0.6)
                    ax.plot([PAPER_EPOCHS], [paper], marker=_MARK[k], color=c, ms=6)
                    gx.plot(xs, [max(r["nll"] - paper, 0.05) for r in recs], label=label,
                            **line)
                rep = REPRODUCTIONS.get((obj, layers, k))
                if rep is not None:
                    ax.plot([PAPER_EPOCHS * 1.35], [rep], marker=_MARK[k], color=c, ms=6,
                            mfc="none")
        ax.set_xlim(0.8, PAPER_EPOCHS * 1.8)
        gx.set_xlim(0.8, PAPER_EPOCHS * 1.8)
        ax.set_title(f"{layers} stochastic layer{'s' if layers > 1 else ''}", fontsize=10)
        if not any(key[1] == layers for key in ser):
            ax.text(0.5, 0.5, "no stage scored yet", transform=ax.transAxes, ha="center")
        gx.set_yscale("log")
        gx.set_ylim(0.2, 60)
        gx.yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 50]))
        gx.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        gx.yaxis.set_minor_formatter(NullFormatter())
        for a_ in (ax, gx):
            a_.set_xscale("log")
            a_.grid(alpha=0.3)
        gx.set_xlabel("epochs (stage ends)")
    grid[0][0].set_ylabel("test NLL by L_5000 (nats)")
    grid[1][0].set_ylabel("gap to the paper (nats)")
    grid[0][0].legend(fontsize=7, loc="upper right")
    fig.text(0.5, -0.01, "at 3,280 epochs: filled, the paper; open, a public reproduction "
             "(nbip/IWAE)", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_paired_gaps(result: dict[str, Any]) -> Figure:
    """IWAE minus VAE test NLL at k = 5 and k = 50 after each stage, paired image by image,
    with its 95% interval; the paper's difference dashed. Below zero: the IWAE is better."""
    fig, axes = _panels()
    for ax, layers in zip(axes, (1, 2)):
        for k, shade in ((5, 0.55), (50, 1.0)):
            xs, ds, es = [], [], []
            for e in stage_epochs(result):
                cells = stage_cells(result, e)
                if ("iwae", layers, k) in cells:
                    d, se = paired_gap(cells[("iwae", layers, k)], cells[("vae", layers, k)])
                    xs.append(e)
                    ds.append(d)
                    es.append(Z95 * se)
            if not xs:
                continue
            ax.errorbar(xs, ds, yerr=es, color=style.IWAE, alpha=shade, ls=_LINE[k],
                        marker=_MARK[k], ms=4, capsize=2, label=f"k = {k}")
            paper = claims(result, layers, xs[-1])
            pd = next(c["paper_diff"] for c in paper
                      if c["claim"] == "iwae_beats_vae" and c["k"] == k)
            ax.axhline(pd, color=style.IWAE, alpha=shade, ls="--", lw=0.8)
        ax.axhline(0.0, color=style.REFERENCE, lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("epochs")
        ax.set_title(f"{layers} stochastic layer{'s' if layers > 1 else ''}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("IWAE − VAE test NLL (nats)")
    axes[0].legend(fontsize=8, title="paired, 95% interval;\ndashed: the paper",
                   title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_active_units(result: dict[str, Any]) -> Figure:
    """Active units (all layers) of every cell after each stage; the paper's count at 3,280
    epochs as a filled marker."""
    fig, axes = _panels()
    ser = series(result)
    for ax, layers in zip(axes, (1, 2)):
        for obj in ("vae", "iwae"):
            for k in TABLE1_KS:
                recs = ser.get((obj, layers, k))
                if not recs or (obj == "iwae" and k == 1):
                    continue
                c = _color(obj)
                ax.plot([r["epochs"] for r in recs], [sum(r["active_units"]) for r in recs],
                        color=c, ls=_LINE[k], marker=_MARK[k], ms=4,
                        label="k = 1" if k == 1 else f"{obj.upper()}, k = {k}")
                paper = recs[-1]["paper"].get("active_units")
                if paper:
                    ax.plot([PAPER_EPOCHS], [sum(paper)], marker=_MARK[k], color=c, ms=6)
        ax.set_xscale("log")
        ax.set_xlim(0.8, PAPER_EPOCHS * 1.5)
        ax.set_xlabel("epochs")
        ax.set_title(f"{layers} stochastic layer{'s' if layers > 1 else ''}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("active units (variance > 0.01)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_unit_variances_by_stage(result: dict[str, Any], k: int = 50, layers: int = 1
                                 ) -> Figure:
    """Each latent unit's activity Var_x E_q[h_j] (first stochastic layer, log scale) after
    each stage, for the VAE (left) and the IWAE (right) with ``k`` samples: the units split
    into two groups as training goes on. The threshold 0.01 as a line."""
    import numpy as np

    fig, axes = _panels()
    ser = series(result)
    for ax, obj in zip(axes, ("vae", "iwae")):
        recs = ser.get((obj, layers, k), [])
        for r in recs:
            v = np.asarray(r["active_units_variances"][0], dtype=float)
            jitter = np.linspace(-0.08, 0.08, len(v))
            ax.scatter(r["epochs"] * 10 ** jitter, np.maximum(v, 1e-6), s=7,
                       color=_color(obj), alpha=0.6, lw=0)
        ax.axhline(0.01, color=style.REFERENCE, lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epochs")
        ax.set_title(f"{obj.upper()}, k = {k}, {layers} layer{'s' if layers > 1 else ''}",
                     fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("unit activity Var_x E_q[h_j]")
    fig.tight_layout()
    return fig
