"""``python -m iwae_tutorial reproduce`` in pieces, from a notebook or a script.

A long ``reproduce`` run (the paper's full table) is cut into pieces with ``--max-minutes``:
each piece stops cleanly with its state saved and exits with status 75 ("not finished, run me
again"), and the same command continues where it stopped. :func:`run_in_pieces` is the loop a
notebook runs (chapter 5), the Python twin of the shell loop of :mod:`iwae_tutorial.reproduce`::

    until python -m iwae_tutorial reproduce ... --max-minutes 60; do [ $? -eq 75 ] || break; done

After each unfinished piece it prints how long the rest will take at the pace the run has
measured so far (:func:`iwae_tutorial.stagewise.time_left_text`).
"""

from __future__ import annotations

import codecs
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TextIO

__all__ = ["run_in_pieces", "reproduce_argv", "result_path"]

_PREFIX = ["python", "-m", "iwae_tutorial", "reproduce"]


def reproduce_argv(command: str) -> list[str]:
    """The options of a ``python -m iwae_tutorial reproduce ...`` command line (a ValueError
    for any other command)."""
    argv = shlex.split(command)
    if argv[:4] != _PREFIX:
        raise ValueError(f"not a `{' '.join(_PREFIX)} ...` command: {command!r}")
    return argv[4:]


def result_path(command: str) -> Path:
    """The result file the ``reproduce`` command line ``command`` writes:
    ``<--results-dir>/<protocol tag>.json`` (:func:`iwae_tutorial.reproduce.protocol_tag`)."""
    from .cliargs import build_parser
    from .reproduce import protocol_tag, resolve_budget

    args = build_parser().parse_args(["reproduce", *reproduce_argv(command)])
    two = args.two_layer_epochs
    if two is not None and two >= resolve_budget(args.budget).epochs:
        two = None  # the whole budget: nothing differs (as reproduce does)
    tag = protocol_tag(args.dataset, args.budget, args.batch_size, args.trainer, args.tf32, two)
    return Path(args.results_dir) / f"{tag}.json"


def run_in_pieces(command: str, out: TextIO | None = None) -> int:
    """Run the ``reproduce`` command line ``command`` (with this Python) again and again while
    it exits with status 75, showing its output as it comes; after each unfinished piece, the
    time left at the pace measured so far. An interrupt (Ctrl-C, Jupyter's stop button) asks
    the piece to stop (SIGTERM: while it trains or scores, at the end of its current step or
    block of test images, its state saved), waits for it to end, then stops the loop with a
    KeyboardInterrupt; a second interrupt kills the piece at once (what it did since its last
    saved state is lost). -> the last exit status (0: the table is done)."""
    from .reproduce import EXIT_NOT_FINISHED
    from .stagewise import time_left_text

    out = out or sys.stdout
    result = result_path(command)
    args = [sys.executable, "-m", "iwae_tutorial", "reproduce", *reproduce_argv(command)]
    while True:
        status = _run_showing_output(args, out)
        if status != EXIT_NOT_FINISHED:
            return status
        if result.exists():
            out.write(time_left_text(json.loads(result.read_text())) + "\n")
            out.flush()


def _run_showing_output(args: list[str], out: TextIO) -> int:
    """Run ``args``, copying its output (stdout and stderr, progress bars included) to
    ``out`` as it comes. -> its exit status."""
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    interrupted = False
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env=env) as proc:
        assert proc.stdout is not None
        while True:
            try:
                chunk = proc.stdout.read1(1 << 16)
            except KeyboardInterrupt:
                if interrupted:  # a second interrupt: stop now (the last checkpoint stays)
                    proc.kill()
                    raise
                interrupted = True  # the piece stops at the end of its step, state saved
                proc.send_signal(signal.SIGTERM)
                continue
            if not chunk:
                break
            out.write(decode.decode(chunk))
            out.flush()
        out.write(decode.decode(b"", final=True))
    if interrupted:
        raise KeyboardInterrupt(f"stopped; run the same command again to continue "
                                f"(exit status {proc.returncode})")
    return proc.returncode
