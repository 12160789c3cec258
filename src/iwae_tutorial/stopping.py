"""Stop cleanly on a signal: SIGTERM and SIGINT set a flag that a training or evaluation loop
checks at the end of each step (and saves its state), instead of killing the process.

:class:`StopFlag` is used by :meth:`iwae_tutorial.fleet.Fleet.fit`,
:func:`iwae_tutorial.fleet.fast.fit_fast` and ``reproduce``'s evaluation (re-exported by
:mod:`iwae_tutorial.fleet`).
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopFlag"]


class StopFlag:
    """SIGTERM/SIGINT set a flag (checked at the end of each step) instead of killing.

    Nested flags: a signal caught by an inner one (a training loop inside ``reproduce``) is
    passed to the outer one on exit, so the caller stops too, even when the inner loop had
    nothing left to stop."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        if self.enabled:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
            outer = getattr(h, "__self__", None)
            if self.requested and isinstance(outer, StopFlag):
                outer.requested = True  # a signal caught inside still stops the caller
