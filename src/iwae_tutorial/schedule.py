"""The paper's training schedule: stages of epochs at decreasing learning rates.

Burda et al. (2015), Sec. 5: for i = 0..7, 3^i passes over the data at a learning rate of
1e-3 * 10^(-i/7), 3,280 epochs in all. Short runs take its first N epochs
(:func:`truncate_schedule`); :func:`lr_at` is the rate of one epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Stage", "burda_schedule", "truncate_schedule", "constant_schedule",
           "resolve_schedule", "schedule_epochs", "stage_ends", "lr_at", "PAPER_EPOCHS",
           "PAPER_BATCH",
           "lr_scale_for_batch"]

#: the paper's minibatch size
PAPER_BATCH = 20

#: epochs of the paper's schedule (1 + 3 + ... + 3^7)
PAPER_EPOCHS = 3280


@dataclass(frozen=True)
class Stage:
    """``epochs`` passes over the data at learning rate ``lr``."""

    epochs: int
    lr: float


def burda_schedule(stages: int = 8, base_lr: float = 1e-3) -> list[Stage]:
    """The paper's schedule: for i = 0..7, 3^i epochs at lr = 1e-3 * 10^(-i/7); 3,280 epochs."""
    return [Stage(3**i, base_lr * 10 ** (-i / 7)) for i in range(stages)]


def truncate_schedule(schedule: Sequence[Stage], epochs: int) -> list[Stage]:
    """The first ``epochs`` epochs of ``schedule`` (same learning rates), for short runs."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    out, left = [], epochs
    for st in schedule:
        if left <= 0:
            break
        out.append(Stage(min(st.epochs, left), st.lr))
        left -= st.epochs
    if left > 0:  # longer than the schedule: continue at its last learning rate
        out.append(Stage(left, schedule[-1].lr))
    return out


def constant_schedule(epochs: int, lr: float = 1e-3) -> list[Stage]:
    """``epochs`` epochs at one learning rate."""
    return [Stage(int(epochs), float(lr))]


def resolve_schedule(schedule: Sequence[Stage] | None = None,
                     epochs: int | None = None) -> list[Stage]:
    """``schedule`` (default: the paper's), cut to its first ``epochs`` epochs when given."""
    schedule = burda_schedule() if schedule is None else schedule
    return list(schedule if epochs is None else truncate_schedule(schedule, epochs))


def schedule_epochs(schedule: Sequence[Stage]) -> int:
    """Total number of epochs in a schedule."""
    return sum(st.epochs for st in schedule)


def stage_ends(schedule: Sequence[Stage]) -> list[int]:
    """The epoch counts at which the stages of ``schedule`` end: [1, 4, 13, 40, 121, 364,
    1093, 3280] for the paper's; a truncated schedule ends with its last (partial) stage."""
    ends, total = [], 0
    for st in schedule:
        total += st.epochs
        ends.append(total)
    return ends


def lr_at(schedule: Sequence[Stage], epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``."""
    for st in schedule:
        if epoch < st.epochs:
            return st.lr
        epoch -= st.epochs
    raise IndexError("epoch beyond the schedule")


def lr_scale_for_batch(batch_size: int) -> float:
    """How much a larger minibatch scales the paper's learning rates in this project:
    sqrt(batch_size / 20), the square-root rule for Adam (the gradient's noise falls as
    1/sqrt(batch)). A protocol deviation: results trained this way name their batch size and
    this scale."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return (batch_size / PAPER_BATCH) ** 0.5
