"""Figures of the study chapters, sized for the book's column (at most 7 inches wide, at most
two panels side by side): the random-weights study (trials, paired gains, learned standard
deviations), the anomaly study (ROC curves, score histograms, the most and least unusual
images) and the chapter on depth, latent size and binarization (active units per stochastic
layer, the unit variances of models with codes of different sizes, and train and test bounds
over the epochs of a training run).

Colours come from :mod:`iwae_tutorial.plots.style`: the VAE orange, the IWAE blue, IWAER and
IWAERrec their own; what else a figure tells apart (layers, train and test, the two
binarizations, two scores) is told by hatching or line style."""

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
           "plot_generalisation_gap", "plot_binarization_study", "plot_latent_study",
           "plot_random_weight_trials", "plot_weight_stds", "plot_roc_curves",
           "plot_score_histograms", "plot_rankings", "plot_framed_images"]

#: the widest figure the book's column shows without shrinking it (inches)
COLUMN_WIDTH = 7.0

HATCHES = ("", "//", "..")  # stochastic layers h1, h2, h3


def plot_units_per_layer(records: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Figure:
    """Active units of each stochastic layer, one group of bars per (depth, layer), one bar per
    model kind; each bar's outline is the layer's size (its number of units).

    records: result records with ``objective``, ``layers`` ([[hidden..., d_l] per layer]) and
    ``active_units`` ([count per layer])."""
    ax = get_axes(ax, (COLUMN_WIDTH, 3.5))
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
                         axes: Sequence[Axes] | None = None, ncols: int = 2,
                         extra_threshold: float | None = None) -> Figure:
    """One histogram panel per entry of ``panels`` (title -> {model name -> unit variances
    Var_x E_q[h_j | x]}), on the same log10 bins, with the active-unit threshold dashed (and
    ``extra_threshold`` dotted, when given); ``ncols`` panels per row."""
    if axes is None:
        import matplotlib.pyplot as plt
        nrows = -(-len(panels) // ncols)
        cols = min(ncols, len(panels))
        fig, axes = plt.subplots(nrows, cols, figsize=(COLUMN_WIDTH * cols / ncols,
                                                       2.6 * nrows), squeeze=False)
        axes = axes.ravel()
        for ax in axes[len(panels):]:
            fig.delaxes(ax)
    all_v = np.concatenate([np.asarray(v, float) for p in panels.values() for v in p.values()])
    logs = np.log10(np.maximum(all_v, 1e-12))
    bins = np.linspace(min(logs.min(), np.log10(threshold) - 1), max(logs.max(), 0) + 0.1, 36)
    for ax, (title, models) in zip(axes, panels.items()):
        for name, v in models.items():
            ax.hist(np.log10(np.maximum(np.asarray(v, float), 1e-12)), bins=bins,
                    histtype="step", lw=1.5, color=style.model_color(name), label=name)
        ax.axvline(np.log10(threshold), color=style.REFERENCE, ls="--", lw=1)
        if extra_threshold is not None:
            ax.axvline(np.log10(extra_threshold), color=style.REFERENCE, ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(r"$\log_{10}\ \mathrm{Var}_x\, E_q[h_j \mid x]$")
        ax.set_ylabel("units")
    axes[0].legend(fontsize=8)
    axes[0].figure.tight_layout()
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


def plot_binarization_study(runs: Mapping[str, Sequence[Mapping[str, Any]]], k: int,
                            skip: int = 2) -> Figure:
    """The binarization study in one figure: train and test bound per epoch under each
    binarization (top row, :func:`plot_train_test`), and train minus test for all (bottom,
    :func:`plot_generalisation_gap`). runs: {binarization: models}; ``k`` names the bound."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(COLUMN_WIDTH, 6.2))
    grid = fig.add_gridspec(2, len(runs))
    top = [fig.add_subplot(grid[0, i]) for i in range(len(runs))]
    for ax, (name, models) in zip(top, runs.items()):
        plot_train_test(models, ax=ax, skip=skip, title=f"{name} binarization: L_{k}")
        ax.title.set_fontsize(10)
        ax.legend(fontsize=7)
    top[1].sharey(top[0])
    bottom = fig.add_subplot(grid[1, :])
    plot_generalisation_gap(runs, ax=bottom)
    bottom.set_title("train minus test", fontsize=10)
    fig.tight_layout()
    return fig


def plot_latent_study(sizes: Sequence[int], records: Mapping[tuple[str, int], Mapping[str, Any]],
                      second_threshold: float = 0.1) -> Figure:
    """Active units (at the paper's threshold, solid, and above ``second_threshold``, dashed)
    and test NLL against the number of latent units, one colour per model kind.
    records: {(objective, latent units): result record}."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.3))
    kinds = sorted({o for o, _ in records}, key=("vae", "iwae").index)
    for o in kinds:
        color = style.model_color(o)
        rs = [records[o, s] for s in sizes]
        axes[0].plot(sizes, [r["active_units_total"] for r in rs], "o-", color=color,
                     label=f"{o.upper()}, A > {ACTIVE_UNITS_THRESHOLD}")
        axes[0].plot(sizes, [int((np.asarray(r["active_units_variances"][0])
                                  > second_threshold).sum()) for r in rs], "s--", color=color,
                     label=f"{o.upper()}, A > {second_threshold}")
        axes[1].errorbar(sizes, [r["nll"] for r in rs], [r["nll_stderr"] for r in rs],
                         fmt="o-", color=color, capsize=3, label=o.upper())
    axes[0].plot(sizes, sizes, ":", color=style.REFERENCE, lw=0.8, label="all units")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("latent units")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("active units")
    axes[1].set_ylabel("test NLL (nats)")
    fig.tight_layout()
    return fig


def plot_random_weight_trials(summary: Mapping[str, Any]) -> Figure:
    """The random-weights study: each trial's test log-likelihood per method (dots) with the
    mean and standard error over trials (squares), and each method's paired gain over the IWAE
    of the same seed (± 2 standard errors). summary: ``studies.random_weights_summary``."""
    import matplotlib.pyplot as plt

    methods, stats, seeds = summary["methods"], summary["stats"], summary["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.3))
    for i, m in enumerate(methods):
        color = style.model_color(m)
        vals = [-r["nll"] for r in summary["by"][m]]
        axes[0].plot([i] * len(vals), vals, "o", color=color, alpha=0.7)
        axes[0].errorbar([i + 0.15], [stats[m][0]], yerr=[stats[m][1]], fmt="s", color=color,
                         capsize=3)
    axes[0].set_xticks(range(len(methods)), methods)
    axes[0].set_ylabel("test log-likelihood (nats)")
    axes[0].set_title("trials (dots), mean ± s.e. (squares)", fontsize=10)
    for j, (m, gains) in enumerate(summary["per_seed"].items()):
        axes[1].errorbar(np.array(seeds) + 0.1 * j, [g[0] for g in gains],
                         yerr=[2 * g[1] for g in gains], fmt="o", color=style.model_color(m),
                         capsize=3, label=m)
    axes[1].axhline(0, color=style.REFERENCE, lw=0.8)
    axes[1].set_xticks(seeds, [f"seed {s}" for s in seeds])
    axes[1].set_ylabel("gain over the IWAE (nats)")
    axes[1].set_title("paired, same seed (± 2 s.e.)", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_weight_stds(records: Sequence[Mapping[str, Any]], init_std: float,
                     ax: Axes | None = None) -> Figure:
    """The learned standard deviations of random weights, one line per layer and model: the
    median (dot), the middle half (thick) and 90% (thin) of the layer's weights; the starting
    value dotted. records: random-weights results with ``method`` and ``weight_stds``
    ({layer: {"quantiles_5_25_50_75_95": [...]}}); the layers are labelled from the first."""
    ax = get_axes(ax, (COLUMN_WIDTH, 3.6))
    offsets = np.linspace(0.15, -0.15, len(records)) if len(records) > 1 else [0.0]
    ticks: list[str] = []
    for offset, r in zip(offsets, records):
        color = style.model_color(r["method"])
        for i, (name, v) in enumerate(r["weight_stds"].items()):
            q05, q25, q50, q75, q95 = v["quantiles_5_25_50_75_95"]
            y = i + offset
            ax.plot([q05, q95], [y, y], color=color, lw=1)
            ax.plot([q25, q75], [y, y], color=color, lw=5, solid_capstyle="butt")
            ax.plot([q50], [y], "o", color=color, mec=style.ON_DARK,
                    label=r["method"] if i == 0 else None)
            if r is records[0]:
                ticks.append(name)
    ax.axvline(init_std, color=style.REFERENCE, lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yticks(range(len(ticks)), ticks, fontsize=8)
    ax.set_xlabel("standard deviation of a weight")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def plot_roc_curves(study: Mapping[str, Any], labels: Mapping[str, str], k: int = 50,
                    scores: Sequence[tuple[str, str]] = (("s_vae", "-"), ("s_iwae", "--"))
                    ) -> Figure:
    """ROC curves of the anomaly study's models with ``k`` samples, one panel per set-up (the
    title from ``labels``), one line per model and score (its line style), the AUROC in the
    legend."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    setups = study["setups"]
    fig, axes = plt.subplots(1, len(setups), figsize=(COLUMN_WIDTH, 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], setups.items()):
        y = np.r_[np.zeros(s["n_normal"]), np.ones(s["n_anomalous"])]
        for mo in s["models"]:
            if mo["k"] != k:
                continue
            for score, ls in scores:
                fpr, tpr, _ = roc_curve(y, np.r_[mo["scores_normal"][score],
                                                 mo["scores_anomalous"][score]])
                ax.plot(fpr, tpr, ls, color=style.model_color(mo["objective"]),
                        label=f"{mo['objective'].upper()}, {score} ({mo['auroc'][score]:.2f})")
        ax.plot([0, 1], [0, 1], ":", color=style.REFERENCE, lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_title(labels.get(name, name), fontsize=10)
        ax.legend(fontsize=7, title=f"k = {k}", title_fontsize=7)
    axes[0, 0].set_ylabel("true positive rate")
    fig.tight_layout()
    return fig


def plot_score_histograms(study: Mapping[str, Any], labels: Mapping[str, str],
                          objective: str = "iwae", k: int = 50, score: str = "s_iwae") -> Figure:
    """Histograms of one model's ``score`` on the normal (grey) and the anomalous images, one
    panel per set-up of the anomaly study."""
    import matplotlib.pyplot as plt

    setups = study["setups"]
    fig, axes = plt.subplots(1, len(setups), figsize=(COLUMN_WIDTH, 3.0), squeeze=False)
    for ax, (name, s) in zip(axes[0], setups.items()):
        mo = next(m for m in s["models"] if m["objective"] == objective and m["k"] == k)
        a, b = np.array(mo["scores_normal"][score]), np.array(mo["scores_anomalous"][score])
        bins = np.linspace(min(a.min(), b.min()), np.quantile(np.r_[a, b], 0.995), 60)
        ax.hist(a, bins, color=style.DATA, label=s["normal"], density=True)
        ax.hist(b, bins, color=style.model_color(objective), alpha=0.6, label=s["anomalies"],
                density=True)
        ax.set_xlabel(f"{score} (nats)")
        ax.set_title(f"{labels.get(name, name)}: {objective.upper()} k={k}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_rankings(rankings: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str]
                  ) -> Figure:
    """The most and the least unusual images of each set-up, one row each, the score above
    every image and a frame (:data:`~iwae_tutorial.plots.style.HIGHLIGHT`) around the
    anomalies. rankings: ``studies.anomaly_rankings``."""
    import matplotlib.pyplot as plt

    rows = [(name, which) for name in rankings for which in ("most", "least")]
    n = max(len(rankings[name][which]["scores"]) for name, which in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(COLUMN_WIDTH, 1.05 * len(rows) + 0.2),
                             squeeze=False)
    for r, (name, which) in enumerate(rows):
        part = rankings[name][which]
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(part["scores"]):
                ax.set_axis_off()
                continue
            ax.imshow(np.asarray(part["images"][c]).reshape(28, 28),
                      cmap=style.IMAGE_CMAP + "_r", vmin=0, vmax=1)
            for spine in ax.spines.values():
                spine.set_visible(bool(part["anomalous"][c]))
                spine.set_color(style.HIGHLIGHT)
                spine.set_linewidth(2.5)
            ax.set_title(f"{part['scores'][c]:.0f}", fontsize=7, pad=2)
        axes[r, 0].set_ylabel(f"{labels.get(name, name)}\n{which}", fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig


def plot_framed_images(images: Any, ncol: int = 8, title: str | None = None) -> Figure:
    """Images ([n, 784], ink 1) in a grid of ``ncol`` columns, each in a thin frame, so that
    near-blank ones still show where they are."""
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    nrow = -(-len(images) // ncol)
    side = COLUMN_WIDTH / ncol
    height = side * nrow + (0.3 if title else 0.0)
    fig, axes = plt.subplots(nrow, ncol, figsize=(COLUMN_WIDTH, height), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.set_axis_off()
            continue
        ax.imshow(images[i].reshape(28, 28), cmap=style.IMAGE_CMAP + "_r", vmin=0, vmax=1)
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(style.CHECK)
            spine.set_linewidth(0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    return fig
