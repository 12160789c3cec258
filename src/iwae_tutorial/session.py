"""The run harness that every trainer shares.

The package trains in three ways: one model (:func:`iwae_tutorial.train.fit`), many models
exactly as if alone (:meth:`iwae_tutorial.fleet.Fleet.fit`) and many models fast
(:func:`iwae_tutorial.fleet.fit_fast`). Each supplies its step and its state (what it
checkpoints and how it resumes); a :class:`Session` owns the rest, once:

- the run directory's lock (one process at a time) and its ``log.jsonl``: removed on a fresh
  start, repaired from the checkpoint's history on a resume (a kill between the checkpoint and
  the log line loses nothing), one line appended per epoch;
- stopping cleanly: SIGTERM/SIGINT (:class:`~iwae_tutorial.stopping.StopFlag`), a wall-clock
  deadline, and a test hook (stop after N steps);
- the progress bar and the per-epoch callback;
- the result (:class:`FitResult`) and the divergence error (:func:`diverged`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .checkpoints import CheckpointError, RunDirLock, sync_log
from .schedule import Stage, lr_at, schedule_epochs
from .stopping import StopFlag

__all__ = ["Session", "FitResult", "TrainingDivergedError", "diverged", "LOG_NAME",
           "RESTART_FIX", "data_digest", "fingerprint", "check_resumable", "check_state"]

LOG_NAME = "log.jsonl"


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class FitResult:
    """What a fleet trainer did: per-member histories, whether the schedule is done."""

    history: list[list[dict]]  # per member (in member order), per epoch
    finished: bool  # False: stopped early (time limit or signal), checkpointed; call again
    epochs_done: int
    seconds: float  # training wall time of this call
    frozen: dict[str, int] | None = None  # member -> the epoch it diverged in (fit_fast)


def diverged(what: str, kept: Path | None, advice: str = "Try a lower learning rate.",
             *, after_epoch: int | None = None) -> TrainingDivergedError:
    """The one divergence error: ``what`` happened; the last good checkpoint ``kept`` (when it
    exists; of epoch ``after_epoch`` when given) stays; ``advice``."""
    of = f" (after epoch {after_epoch})" if after_epoch is not None else ""
    where = (f"the last good checkpoint{of} is kept at {kept}"
             if kept is not None and kept.exists() else "no checkpoint was written")
    return TrainingDivergedError(f"{what}; {where}. {advice}")


class Session:
    """One call of a trainer: ``with Session(run_dir, ...) as s:`` (see the module docstring).

    Args:
        run_dir: the run directory (None: nothing is locked or logged).
        lock_option: the option that names ``run_dir``, for the lock's message.
        max_seconds: :attr:`stop_requested` after this many seconds.
        handle_signals: SIGTERM/SIGINT set :attr:`stop_requested` instead of killing.
        stop_after_steps: :attr:`stop_requested` after this many :meth:`step_done` (tests).
    """

    def __init__(self, run_dir: str | Path | None, *, lock_option: str,
                 max_seconds: float | None = None, handle_signals: bool = False,
                 stop_after_steps: int | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.lock_option = lock_option
        self.t_start = time.perf_counter()
        self.deadline = None if max_seconds is None else self.t_start + float(max_seconds)
        self.handle_signals = handle_signals
        self.stop_after_steps = stop_after_steps
        self.steps = 0
        self.bar: Any = None
        self._stack = contextlib.ExitStack()
        self._flag: StopFlag | None = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Session:
        with contextlib.ExitStack() as stack:
            if self.run_dir is not None:  # one process at a time in a run directory
                stack.enter_context(RunDirLock(self.run_dir, self.lock_option))
            self._flag = stack.enter_context(StopFlag(self.handle_signals))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ the log
    @property
    def log_path(self) -> Path | None:
        return self.run_dir / LOG_NAME if self.run_dir is not None else None

    def fresh_start(self) -> None:
        """A start without resuming: the old log goes with the old state."""
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def repair_log(self, lines: Sequence[dict]) -> None:
        """On a resume: the log is the checkpoint's history (a line lost or left over by a
        kill between the checkpoint and the log is put right)."""
        if self.log_path is not None:
            sync_log(self.log_path, list(lines))

    def log_epoch(self, line: dict) -> None:
        """Append one epoch's line (write the checkpoint first: see :meth:`repair_log`)."""
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------------ progress, stopping
    def progress_bar(self, enabled: bool, **tqdm_kwargs: Any) -> Any:
        """A tqdm bar closed with the session (None when not ``enabled``)."""
        if enabled:
            from tqdm.auto import tqdm

            self.bar = self._stack.enter_context(tqdm(**tqdm_kwargs))
        return self.bar

    def step_done(self) -> None:
        self.steps += 1

    @property
    def stop_requested(self) -> bool:
        """A signal came, the deadline passed or the test hook's steps are done."""
        return bool((self._flag is not None and self._flag.requested)
                    or (self.deadline is not None and time.perf_counter() > self.deadline)
                    or (self.stop_after_steps is not None
                        and self.steps >= self.stop_after_steps))

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t_start

    def result(self, history: Sequence[Sequence[dict]], finished: bool, epochs_done: int,
               frozen: dict[str, int] | None = None) -> FitResult:
        return FitResult([list(h) for h in history], finished, epochs_done, self.seconds,
                         frozen)


# ------------------------------------------------------------------ resuming: the checks
RESTART_FIX = "start it afresh (--restart; resume=False in Python)"


def data_digest(x: Tensor) -> str:
    """A short fingerprint of a data tensor (its shape and every 97th row), so a checkpoint
    is not resumed on other data."""
    rows = x[::97].detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(rows.numpy().tobytes())
    return h.hexdigest()[:16]


def check_resumable(saved: dict | None, fingerprint: dict, history: Sequence[dict],
                    schedule: Sequence[Stage], where: str,
                    place: str = "another run directory",
                    other: str = "another configuration") -> None:
    """Refuse to resume a checkpoint of another configuration (``saved`` vs ``fingerprint``,
    flat dicts), of other learning rates (``history`` vs ``schedule``), or one already past
    the end of ``schedule``: a ValueError, one line naming what differs and the fix.

    Fingerprint keys the checkpoint does not have (older versions) are not compared."""
    theirs = saved if isinstance(saved, dict) else {}
    diff = [f"{key} {theirs[key]!r} there, {fingerprint[key]!r} now" for key in fingerprint
            if key in theirs and theirs[key] != fingerprint[key]]
    fix = f"use {place}, or {RESTART_FIX}"
    if diff:
        raise ValueError(f"the checkpoint in {where} belongs to {other} "
                         f"({'; '.join(diff)}); {fix}")
    done = len(history)
    total = schedule_epochs(schedule)
    if done > total:
        raise ValueError(f"the checkpoint in {where} has done {done} epochs, more than the "
                         f"{total} asked for; ask for at least {done} epochs (--epochs "
                         f"{done}), or {RESTART_FIX}")
    for entry in history:
        lr = lr_at(schedule, int(entry["epoch"]) - 1)
        if not math.isclose(float(entry["lr"]), lr, rel_tol=1e-9):
            raise ValueError(f"the checkpoint in {where} trained epoch {entry['epoch']} at "
                             f"learning rate {entry['lr']:.3g}, the schedule now asks for "
                             f"{lr:.3g}; {fix}")


def fingerprint(objective: str, k: int, batch_size: int, seed: int, n: int,
                 data: str | None = None) -> dict:
    """What must not change between a checkpoint and its resumption (the schedule may grow;
    the learning rates of the epochs done are checked against the history)."""
    out = {"objective": str(objective), "k": int(k), "batch_size": int(batch_size),
           "seed": int(seed), "n": int(n)}
    if data is not None:
        out["data"] = data
    return out


def check_state(state: dict, keys: Sequence[str], path: Path) -> None:
    """A CheckpointError when ``state`` (read from ``path``) lacks one of ``keys``."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"the checkpoint {path} lacks {', '.join(missing)}: it was not "
                              f"written by this trainer; delete it, or {RESTART_FIX}")
