"""Run budgets: one switch, ``IWAE_PROFILE``, read by every chapter and by the CLI.

- ``smoke``: seconds per chapter (nbval in CI): tiny subsets, one epoch or less.
- ``book`` (default): each chapter in at most a few minutes on 2 CPU cores.
- ``full``: the paper's schedule, for a GPU.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

__all__ = ["PROFILES", "current_profile", "pick", "default_device"]

PROFILES = ("smoke", "book", "full")
T = TypeVar("T")


def current_profile() -> str:
    """The active profile from ``$IWAE_PROFILE`` (default ``book``), validated."""
    name = os.environ.get("IWAE_PROFILE", "book").strip().lower() or "book"
    if name not in PROFILES:
        raise ValueError(
            f"IWAE_PROFILE={name!r} is not a profile; use one of {', '.join(PROFILES)} "
            "(smoke: seconds, book: minutes on a laptop, full: the paper's schedule on a GPU)"
        )
    return name


def pick(smoke: T, book: T, full: T, profile: str | None = None) -> T:
    """The value for the active (or given) profile: ``pick(smoke=1, book=20, full=3280)``."""
    return {"smoke": smoke, "book": book, "full": full}[profile or current_profile()]


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU (override with ``$IWAE_DEVICE``)."""
    name = os.environ.get("IWAE_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
