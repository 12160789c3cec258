"""Helpers shared by the plotting modules."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def get_axes(ax: Axes | None, figsize: tuple[float, float] = (6, 4)) -> Axes:
    """``ax``, or the axes of a new figure of ``figsize``."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def to_numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor (any device, with or without grad) or array as a NumPy array."""
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def finish(ax: Axes, xlabel: str, ylabel: str, title: str | None = None, *,
           legend_size: float = 8, loc: str | None = None, title_size: float | None = None
           ) -> Figure:
    """Label the axes, draw the legend (small; at ``loc``, else where matplotlib puts it), set
    the title when given; -> the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=legend_size, loc=loc)  # loc None: matplotlib's rcParams choice
    if title:
        ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
    return ax.figure
