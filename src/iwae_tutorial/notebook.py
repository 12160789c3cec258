"""Small conveniences shared by the chapters: seeding, device, figure style, ``glue``, and
``show_source`` (the package's own code, shown in the chapter that teaches it).

Every chapter starts with ``device = setup_notebook(seed=0)``.
"""

from __future__ import annotations

import inspect
import os
import random
import textwrap
from typing import Any

import numpy as np
import torch

from .profiles import current_profile, default_device

__all__ = ["setup_notebook", "glue", "prose", "show_source", "live", "REPOSITORY",
           "install_cell", "source_line"]

#: where the package is installed from on Colab (and the book's repository button)
REPOSITORY = "https://github.com/iwae-tutorial/iwae-tutorial"


def install_cell(repository: str = REPOSITORY) -> str:
    """The first code cell of every chapter: install the package when it is missing (Colab, a
    fresh kernel). One source: ``scripts/sync_install_cell.py`` writes it into the notebooks,
    and a test checks that they hold exactly this text."""
    return ("try:\n"
            "    import iwae_tutorial  # noqa: F401\n"
            "except ImportError:  # on Colab or a fresh kernel: install the package\n"
            f'    %pip install -q "iwae-tutorial @ git+{repository}"')


def live() -> bool:
    """Whether a person is watching this kernel (Jupyter, Colab): progress bars and progress
    lines on. False while the book is being built (``IWAE_BOOK_BUILD=1``, set by
    ``scripts/build_book.sh`` and the browser test), so the rendered pages carry no log noise."""
    return os.environ.get("IWAE_BOOK_BUILD", "") in ("", "0")


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


def prose(text: str) -> Any:
    """A paragraph whose numbers come from code, as the cell's Markdown output: the same text
    on the built site (where the cell's input is removed, tag ``remove-input``), in Colab
    (where a ``# @title`` first line folds the input) and in Jupyter. Write it as an f-string;
    the indentation of a triple-quoted string is removed and single line breaks are kept
    (Markdown joins them into one paragraph; a blank line starts the next).

        # @title The result in words
        prose(f"The IWAE scores {ll:.2f} nats, the VAE {ll_vae:.2f}.")
    """
    from IPython.display import Markdown

    return Markdown(textwrap.dedent(text).strip("\n"))


def show_source(*objs: Any) -> Any:
    """The source code of one or more functions, classes or methods of the package, as a
    highlighted Python block: ``show_source(bounds.iwae_bound)`` as the last line of a cell.

    Returns an ``IPython.display.Code`` object, which renders in Jupyter, on Colab and in the
    built book (as HTML); the code is read from the installed package with
    :func:`inspect.getsource`, so it is always the code that runs. A method's indentation is
    removed; several objects are shown one after the other.
    """
    from IPython.display import Code

    if not objs:
        raise TypeError("show_source() needs at least one function, class or method")
    parts = [textwrap.dedent(inspect.getsource(obj)).rstrip() for obj in objs]
    return Code("\n\n\n".join(parts) + "\n", language="python")


def source_line(info: dict, name: str | None = None) -> str:
    """One readable sentence saying where a model from :func:`iwae_tutorial.runs.load_or_train`
    came from, for a chapter to print instead of the metadata: what it is, whether it was
    loaded or trained here, for how many epochs, its stored test NLL and the commit and date
    that trained it, e.g. "IWAE (k = 5): the model shipped with the package, trained for 30
    epochs; test NLL 90.56 ± 0.78 nats (L_5000, 1000 test points); commit 95d4ccb, 2026-12-01."
    """
    from .results import current_keys

    info = current_keys(info)  # files written before the one schema: its keys
    cfg = info.get("config") if isinstance(info.get("config"), dict) else info
    label = name or str(cfg.get("objective", "model")).upper()
    if cfg.get("k") is not None:
        label += f" (k = {cfg['k']})"
    epochs = info.get("epochs")
    span = (f"{epochs} epoch{'' if int(epochs) == 1 else 's'}" if epochs is not None
            else "an unrecorded number of epochs")
    source = str(info.get("source", ""))
    if source.startswith("trained in this notebook"):
        parts = [f"{label}: trained in this notebook for {span}"]
        if info.get("seconds") is not None:
            parts[0] += f" ({float(info['seconds']):.0f} s)"
        if info.get("train_bound") is not None:
            parts.append(f"training bound in the last epoch {float(info['train_bound']):.2f} "
                         "nats")
        return "; ".join(parts) + "."
    where = source.split(", trained for")[0] or "a stored model"
    parts = [f"{label}: {where}, trained for {span}"]
    if info.get("nll") is not None:
        se = info.get("nll_stderr")
        n = info.get("eval_n")
        parts.append(f"test NLL {float(info['nll']):.2f}"
                     + (f" ± {float(se):.2f}" if se else "") + " nats"
                     + (f" (L_{info['eval_k']}" if info.get("eval_k") else " (")
                     + (f", {n} test points)" if n else ")"))
    prov = info.get("provenance")
    if isinstance(prov, dict) and prov.get("git_commit"):
        parts.append(f"commit {str(prov['git_commit'])[:7]}, "
                     f"{str(prov.get('date_utc', '?'))[:10]}")
    return "; ".join(parts) + "."
