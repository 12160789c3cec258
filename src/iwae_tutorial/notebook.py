"""Small conveniences shared by the chapters: seeding, device, figure style, and ``glue``.

Every chapter starts with ``device = setup_notebook(seed=0)``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from .profiles import current_profile, default_device

__all__ = ["setup_notebook", "glue"]


def setup_notebook(seed: int = 0, verbose: bool = True) -> torch.device:
    """Seed python, numpy and torch, set a readable figure style, and return the device
    (CUDA when present, else the CPU, on one thread unless ``$IWAE_THREADS`` says otherwise).
    Prints the budget profile and the device."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        import matplotlib.pyplot as plt

        plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (6, 4),
                             "axes.spines.top": False, "axes.spines.right": False})
    except ImportError:  # pragma: no cover
        pass
    device = default_device()
    if device.type == "cpu":
        # The chapters' models are small: one thread is about as fast on an idle machine and
        # 10-30x faster on a busy one (two spin-waiting threads). $IWAE_THREADS overrides it.
        torch.set_num_threads(int(os.environ.get("IWAE_THREADS", "1")))
    if verbose:
        print(f"profile: {current_profile()}   device: {device}   torch {torch.__version__}")
    return device


def glue(name: str, value: Any, display: bool = False) -> Any:
    """myst-nb's ``glue`` when it is installed (building the book), else a no-op (Colab).

    Returns ``value`` so it can be used inline.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - outside the book build
        return value
    _glue(name, value, display=display)
    return value
