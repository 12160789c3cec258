"""Pacing a ``reproduce`` run: the seconds an epoch takes, whether the next stage fits in the time
left (:func:`stage_fits`, for a device lent for minutes), the estimate logged after training,
and TF32 for the training's matrix products only (:func:`matmul_precision`).

``run`` and ``part`` are :class:`iwae_tutorial.reproduce.Run` and
:class:`~iwae_tutorial.reproduce.Part`.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["stage_fits", "epoch_seconds", "pace", "matmul_precision", "log_estimate"]


def pace(seconds: list[float]) -> float:
    """The seconds an epoch takes now: the median of the last five epochs' wall times."""
    return statistics.median(seconds[-5:])


def stage_fits(run: Any, part: Any, epochs: int, done: dict,
                hint: float | None) -> bool:
    """Whether training ``part`` to ``epochs`` and scoring it fits in the time left (True
    when there is no time limit or nothing to judge by); logs the estimate either way."""
    left = run.seconds_left()
    if left is None:
        return True
    trained = (part.stage_dir(run, epochs) / "fleet.json").exists()
    seconds = epoch_seconds(part.run_dir(run) / "log.jsonl")
    per_epoch = pace(seconds) if seconds else hint
    if per_epoch is None and not trained:
        return True
    train = 0.0 if trained else (epochs - len(seconds)) * float(per_epoch)
    scorings = [v["seconds"]["eval_nll"] + v["seconds"]["active_units"]
                for v in done.values() if v.get("part") == part.name]
    score = scorings[-1] if scorings else 0.0
    fits = train + score <= left
    verdict = "go" if fits else "stop here (the next window goes on)"
    run.log(f"{part.name} to epoch {epochs}: ~{train:.0f} s of training and ~{score:.0f} s of "
            f"scoring, {left:.0f} s left: {verdict}")
    return fits


def epoch_seconds(log_path: Path) -> list[float]:
    """The wall seconds of each epoch in a fleet's log.jsonl (unreadable lines skipped)."""
    out: list[float] = []
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            s = float(json.loads(line)["seconds"])
        except (ValueError, KeyError, TypeError):
            continue
        if s >= 0:
            out.append(s)
    return out


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """TF32 matrix products inside the block (CUDA; the previous setting restored after), so
    that evaluation always runs in float32."""
    import torch

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def log_estimate(run: Any, part: Any, history: list[dict]) -> None:
    """One line: the measured seconds per epoch (median of the last 5 epochs) and the time
    the rest of this fleet's budget takes at that pace."""
    if not history:
        return
    per_epoch = pace([float(h["seconds"]) for h in history])
    left = part.epochs - len(history)
    run.log(f"{part.name}: {per_epoch:.1f} s per epoch measured (on {run.device}); the "
            f"remaining {left} epoch(s) of this fleet take about {left * per_epoch / 3600:.2f} h"
            " of training at that pace")
