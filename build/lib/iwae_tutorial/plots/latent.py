"""Figures of the latent-space chapters (a 2-D latent space; reconstructions, samples and
interpolations): image grids, the encoded data coloured by class, true posteriors against
q(z | x), and an interactive "z picker".

Every plotting function draws on a given matplotlib ``Axes`` (or a new figure when ``ax`` is
None) and returns what it drew on; the numbers come from :mod:`iwae_tutorial.latent`, the
colours from :mod:`iwae_tutorial.plots.style`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

from ..latent import LatentGrid
from . import style
from ._util import get_axes
from ._util import to_numpy as _np

__all__ = [
    "tile_images",
    "plot_image_grid",
    "plot_image_rows",
    "plot_manifold",
    "plot_latent_scatter",
    "plot_posterior_vs_q",
    "posterior_window",
    "z_picker",
]


def tile_images(images: torch.Tensor | np.ndarray, ncol: int | None = None, pad: int = 1,
                side: int = 28) -> np.ndarray:
    """Tile images into one picture, with ``pad`` pixels of white between them.

    images: [n, side*side] (then ``ncol`` columns, default a square-ish layout) or
    [rows, cols, side*side] -> [H, W] array with values in [0, 1] (1 = white paper, ink dark).
    """
    a = _np(images).astype(np.float32)
    if a.ndim == 3:
        rows, cols = a.shape[:2]
        a = a.reshape(rows * cols, -1)
    else:
        n = a.shape[0]
        cols = ncol or int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        a = np.concatenate([a, np.zeros((rows * cols - n, a.shape[1]), np.float32)])
    a = a.reshape(rows, cols, side, side)
    out = np.ones((rows * (side + pad) + pad, cols * (side + pad) + pad), np.float32)
    for i in range(rows):
        for j in range(cols):
            y, x = pad + i * (side + pad), pad + j * (side + pad)
            out[y:y + side, x:x + side] = 1.0 - a[i, j]
    return out


def plot_image_grid(images: torch.Tensor | np.ndarray, ncol: int | None = None, *,
                    title: str | None = None, ax: Axes | None = None) -> Axes:
    """Show images ([n, 784] or [rows, cols, 784]) as one tiled picture, dark ink on white."""
    ax = get_axes(ax, (5, 5))
    ax.imshow(tile_images(images, ncol), cmap=style.IMAGE_CMAP, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_image_rows(rows: Mapping[str, torch.Tensor | np.ndarray], *,
                    figsize: tuple[float, float] | None = None, title: str | None = None
                    ) -> plt.Figure:
    """One labelled row of images per entry: e.g. originals, VAE and IWAE reconstructions.

    rows: {label: [n, 784]} (the same n for every row) -> the figure.
    """
    labels = list(rows)
    n = _np(rows[labels[0]]).shape[0]
    fig, axes = plt.subplots(len(labels), 1,
                             figsize=figsize or (min(1.0 * n, 14), 1.15 * len(labels)),
                             squeeze=False)
    for ax, label in zip(axes[:, 0], labels):
        ax.imshow(tile_images(rows[label], ncol=n), cmap=style.IMAGE_CMAP, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_manifold(images: torch.Tensor, span: float, *, title: str | None = None,
                  ax: Axes | None = None) -> Axes:
    """The decoded grid from :func:`iwae_tutorial.latent.decode_grid` ([n, n, 784]), with the
    axes labelled in z units."""
    ax = get_axes(ax, (5, 5))
    n = images.shape[0]
    pic = tile_images(images, pad=0)
    half = span * n / (n - 1)  # each image is centred on its z
    ax.imshow(pic, cmap=style.IMAGE_CMAP, vmin=0, vmax=1, extent=(-half, half, -half, half),
              interpolation="nearest")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    if title:
        ax.set_title(title)
    return ax


def plot_latent_scatter(z: torch.Tensor, labels: torch.Tensor, *, title: str | None = None,
                        ax: Axes | None = None, legend: bool = True, s: float = 3.0,
                        lim: float | None = None) -> Axes:
    """The encodings z: [n, 2] coloured by class labels: [n] (digits 0-9)."""
    ax = get_axes(ax, (5, 5))
    z, y = _np(z), _np(labels)
    cmap = plt.get_cmap(style.CLASS_CMAP)
    for c in np.unique(y):
        m = y == c
        ax.scatter(z[m, 0], z[m, 1], s=s, color=cmap(int(c) % 10), label=str(int(c)),
                   alpha=0.7, linewidths=0, rasterized=True)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_aspect("equal")
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if legend:
        ax.legend(markerscale=4, fontsize="small", ncol=1, loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False, handletextpad=0.1)
    if title:
        ax.set_title(title)
    return ax


def posterior_window(post_mean: torch.Tensor, post_cov: torch.Tensor, q_mean: torch.Tensor,
                     q_std: torch.Tensor, n_std: float = 4.0) -> tuple[tuple[float, float],
                                                                        float]:
    """(centre, half-width) of a square window holding ``n_std`` standard deviations of both the
    true posterior and q around their means (all for one data point: [2], [2, 2], [2], [2])."""
    p_std = torch.sqrt(torch.diagonal(post_cov))
    lo = torch.minimum(post_mean - n_std * p_std, q_mean - n_std * q_std)
    hi = torch.maximum(post_mean + n_std * p_std, q_mean + n_std * q_std)
    centre = (lo + hi) / 2
    half = float((hi - lo).max() / 2)
    return (float(centre[0]), float(centre[1])), half


def plot_posterior_vs_q(grid: LatentGrid, log_post: torch.Tensor, log_q: torch.Tensor, *,
                        title: str | None = None, ax: Axes | None = None,
                        q_color: str = style.ON_DARK, levels: Sequence[float] = (0.5, 0.9, 0.99),
                        inset: tuple[LatentGrid, torch.Tensor, torch.Tensor] | None = None
                        ) -> Axes:
    """The true posterior (filled, normalised on the grid) with q's contours on top.

    log_post, log_q: [G] for one data point (log masses or log densities on ``grid``). The
    contour lines enclose the highest-density regions of q holding ``levels`` of its mass
    (q dashed; the posterior's own solid black lines for the same levels). ``inset``: the
    same three arguments on a finer grid, drawn as a zoomed inset in the upper right corner
    (for a posterior much narrower than q), with a frame marking where it is; the inset
    shows the posterior only (q is nearly flat at that scale).
    """
    ax = get_axes(ax, (5, 5))
    _draw_posterior_vs_q(ax, grid, log_post, log_q, q_color, levels)
    if inset is not None:
        sub = ax.inset_axes([0.6, 0.6, 0.38, 0.38])
        _draw_posterior_vs_q(sub, inset[0], inset[1], None, q_color, levels)
        sub.set_xticks([])
        sub.set_yticks([])
        sub.set_xlabel("")
        sub.set_ylabel("")
        for spine in sub.spines.values():
            spine.set_visible(True)
            spine.set_color(style.ON_DARK)
        ax.indicate_inset_zoom(sub, edgecolor=style.ON_DARK)
    if title:
        ax.set_title(title)
    return ax


def _draw_posterior_vs_q(ax: Axes, grid: LatentGrid, log_post: torch.Tensor,
                         log_q: torch.Tensor | None, q_color: str,
                         levels: Sequence[float]) -> None:
    shape = grid.shape
    xs, ys = _np(grid.xs), _np(grid.ys)
    p = _np(torch.softmax(log_post.double(), 0)).reshape(shape)
    ax.imshow(p, origin="lower", extent=grid.extent, cmap=style.POSTERIOR_CMAP, aspect="auto",
              interpolation="bilinear")
    lines = [(p, style.TRUTH, "solid")]
    if log_q is not None:
        lines.append((_np(torch.softmax(log_q.double(), 0)).reshape(shape), q_color, "dashed"))
    for dens, color, linestyle in lines:
        lv = _hdr_levels(dens, levels)
        if len(lv) >= 1:
            ax.contour(xs, ys, dens, levels=lv, colors=color, linestyles=linestyle,
                       linewidths=1.2)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_aspect("equal")


def _hdr_levels(mass: np.ndarray, levels: Sequence[float]) -> list[float]:
    """Density thresholds whose superlevel sets hold ``levels`` of the mass (increasing,
    unique: what ``contour`` needs)."""
    flat = np.sort(mass.ravel())[::-1]
    cum = np.cumsum(flat) / flat.sum()
    out = sorted({float(flat[min(np.searchsorted(cum, lv), len(flat) - 1)]) for lv in levels})
    return [v for v in out if v > 0]


def z_picker(model, z: torch.Tensor | None = None, labels: torch.Tensor | None = None,
             span: float = 3.0, step: float = 0.05):
    """An ipywidgets "z picker": two sliders choose z = (z_1, z_2); the decoded image is drawn
    next to the encoded data (``z: [n, 2]``, ``labels: [n]``, optional) with the chosen point
    marked. Returns the widget (display it, or leave it last in a cell).

    Needs ``ipywidgets`` (installed with the ``book`` extra; present on Colab).
    """
    import ipywidgets as widgets

    if z is not None and labels is not None and len(z) != len(labels):
        raise ValueError(f"z has {len(z)} points but labels has {len(labels)}")

    def show(z1: float = 0.0, z2: float = 0.0) -> None:
        img = model.decode(torch.tensor([[z1, z2]], dtype=torch.float32,
                                        device=model.device)).cpu()
        fig, axes = plt.subplots(1, 2 if z is not None else 1, figsize=(7 if z is not None
                                                                        else 3, 3.2),
                                 squeeze=False)
        if z is not None:
            plot_latent_scatter(z, labels if labels is not None else torch.zeros(len(z)),
                                ax=axes[0, 0], legend=False, s=2, lim=span)
            axes[0, 0].plot([z1], [z2], marker="x", color=style.REFERENCE, ms=12, mew=3)
        ax = axes[0, -1]
        ax.imshow(1 - img.reshape(28, 28).numpy(), cmap=style.IMAGE_CMAP, vmin=0, vmax=1)
        ax.set_axis_off()
        ax.set_title(f"decoded z = ({z1:.2f}, {z2:.2f})")
        fig.tight_layout()
        plt.show()

    slider = lambda name: widgets.FloatSlider(value=0.0, min=-span, max=span, step=step,
                                              description=name, continuous_update=True)
    return widgets.interactive(show, z1=slider("z₁"), z2=slider("z₂"))
