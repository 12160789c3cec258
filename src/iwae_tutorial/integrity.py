"""What is read back from a run or state folder, checked against what wrote it.

A run directory, a fleet checkpoint or a fast-trainer state is read by the package that wrote
it, so it can be checked: its schema (the keys and the types of each entry), its numbers
(finite, in range), and its parts against one another (the epoch counter against the history,
``config.json`` against the model the checkpoint holds). Each check raises one line naming the
file and the fix (a :class:`~iwae_tutorial.checkpoints.CheckpointError`), so the command line
reports it as the README promises (status 2).

- :func:`claim_run_dir`: the package writes only into run directories it created or
  recognises as its own (the marker file :data:`MARKER_NAME`, or its checkpoint).
- :func:`check_history`, :func:`check_histories`, :func:`check_rng`,
  :func:`check_model_config`: the parts of a checkpoint.
- :func:`check_config_matches`: ``config.json`` against the checkpoint (the truth).
- :func:`check_finite_weights`: a model whose weights hold NaN or inf is refused.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, load_tensors, write_json_atomic

__all__ = ["MARKER_NAME", "RUN_FILES", "ForeignRunDirError", "claim_run_dir", "is_own_run_dir",
           "check_history", "check_histories", "check_rng", "check_rngs", "check_model_config",
           "check_config_matches", "check_finite_weights", "check_stage_scores",
           "DEFAULT_FIX"]

#: the file the package writes into every run directory it creates (see claim_run_dir)
MARKER_NAME = ".iwae-tutorial-run"
#: what to do about a damaged file, unless the caller knows better
DEFAULT_FIX = "delete it to start afresh"
_LOCK_NAME = ".lock"
#: the files the package writes (appends to, replaces, deletes) in a run directory
RUN_FILES = ("checkpoint.pt", "log.jsonl", "config.json", "result.json", "eval.json")


class ForeignRunDirError(ValueError):
    """A folder the package did not write (and so will not write into): one line, the fix."""


# ------------------------------------------------------------------------ run directories
def _foreign_entries(directory: Path, own: Iterable[str]) -> list[str]:
    """The names in ``directory`` that are neither the lock, the marker, a temporary file of
    the atomic writer (``.NAME.*.tmp``) nor one of ``own``."""
    own = set(own) | {_LOCK_NAME, MARKER_NAME}
    return sorted(p.name for p in directory.iterdir()
                  if p.name not in own and not (p.name.startswith(".") and
                                                p.name.endswith(".tmp")))


def _own_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint this package wrote (read safely: a dict holding a
    ``model_config`` and a ``history``, or a fleet's ``params`` and ``history``)."""
    if not path.is_file() or path.is_symlink():
        return False
    try:
        state = load_tensors(path)
    except (CheckpointError, OSError):
        return False
    return "history" in state and ("model_config" in state or "params" in state)


def is_own_run_dir(directory: str | os.PathLike[str],
                   recognised_by: Sequence[str] = ("checkpoint.pt",)) -> bool:
    """Whether ``directory`` is a run directory of this package: it holds the marker file, or
    one of ``recognised_by`` that is a checkpoint of this package (folders written before
    the marker existed)."""
    directory = Path(directory)
    marker = directory / MARKER_NAME
    if marker.is_file() and not marker.is_symlink():
        return True
    return any(_own_checkpoint(directory / name) for name in recognised_by)


def claim_run_dir(directory: str | os.PathLike[str], option: str = "--out",
                  recognised_by: Sequence[str] = ("checkpoint.pt",), *,
                  write: bool = True) -> Path:
    """Make ``directory`` a run directory of this package, or refuse it.

    A folder that does not exist yet, is empty (but for a lock), holds the marker file
    :data:`MARKER_NAME` or one of ``recognised_by`` (the package's checkpoint) is the
    package's: the marker is written (once) and the folder returned. Any other folder holds
    files someone else wrote (a ``config.json`` or ``log.jsonl`` of another tool, say), which
    the package would replace or delete: :class:`ForeignRunDirError`, one line naming the
    folder, the files and the fix. An empty ``directory`` ("") is refused too (it would be
    the working directory). ``write=False`` only checks (nothing is written)."""
    if str(directory).strip() == "":
        raise ForeignRunDirError(f"{option} is empty; name a run directory, e.g. "
                                 f"{option} runs/my-run")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ForeignRunDirError(f"{option} {directory} exists and is not a directory; "
                                 f"{option} names a run directory (it is created)")
    if directory.is_dir() and not is_own_run_dir(directory, recognised_by):
        foreign = _foreign_entries(directory, ())
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more"
                                              if len(foreign) > 5 else "")
            unread = any(n in foreign for n in recognised_by)
            raise ForeignRunDirError(
                f"{option} {directory} holds files this package did not write"
                f"{' (or cannot read)' if unread else ''} ({shown}); give a new or empty "
                f"folder as {option}, or move those files away")
    for name in (MARKER_NAME, *RUN_FILES):
        if (directory / name).is_symlink():
            raise ForeignRunDirError(f"{directory / name} is a symbolic link; remove it (the "
                                     "package never writes through a link)")
    marker = directory / MARKER_NAME
    if write and not marker.exists():
        write_json_atomic(marker, {
            "written_by": "iwae_tutorial",
            "what": "a run directory of iwae_tutorial: the package writes, replaces and "
                    "deletes its files (checkpoint.pt, log.jsonl, config.json, result.json, "
                    "eval.json) here"})
    return directory


# ------------------------------------------------------------------------ checkpoint parts
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bad(path: str | os.PathLike[str], what: str, fix: str, kind: str = "checkpoint"
         ) -> CheckpointError:
    return CheckpointError(f"the {kind} {path} is damaged or was not written by this package "
                           f"({what}); {fix}")


def check_history(history: Any, path: str | os.PathLike[str], *, epoch: Any = None,
                  fix: str = DEFAULT_FIX, kind: str = "checkpoint", who: str = "") -> list[dict]:
    """``history`` (a per-epoch training log read from ``path``) as a list of records with
    ``epoch`` 1, 2, ... (integers), ``lr`` (a positive finite number), ``train_bound`` and
    ``seconds`` (numbers); when ``epoch`` is given (the checkpoint's epoch counter) the
    history must hold exactly that many epochs. Else a CheckpointError naming ``path``."""
    of = f" of {who}" if who else ""
    if not isinstance(history, list):
        raise _bad(path, f"its history{of} is a {type(history).__name__}, not a list of "
                         "per-epoch records", fix, kind)
    for i, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise _bad(path, f"entry {i + 1} of its history{of} is a {type(entry).__name__}, "
                             "not a record", fix, kind)
        missing = [key for key in ("epoch", "lr", "train_bound", "seconds") if key not in entry]
        if missing:
            raise _bad(path, f"entry {i + 1} of its history{of} lacks {', '.join(missing)}",
                       fix, kind)
        if not _is_int(entry["epoch"]) or int(entry["epoch"]) != i + 1:
            raise _bad(path, f"entry {i + 1} of its history{of} is numbered "
                             f"{entry['epoch']!r}, not {i + 1}", fix, kind)
        lr, bound, sec = entry["lr"], entry["train_bound"], entry["seconds"]
        if not (_is_number(lr) and 0 < lr < math.inf):
            raise _bad(path, f"epoch {i + 1} of its history{of} has learning rate {lr!r}",
                       fix, kind)
        if not (_is_number(bound) and math.isfinite(bound)):
            raise _bad(path, f"epoch {i + 1} of its history{of} has training bound {bound!r}",
                       fix, kind)
        if not (_is_number(sec) and 0 <= sec < math.inf):
            raise _bad(path, f"epoch {i + 1} of its history{of} has {sec!r} seconds", fix,
                       kind)
    if epoch is not None:
        if not _is_int(epoch):
            raise _bad(path, f"its epoch counter is {epoch!r}, not an integer", fix, kind)
        if int(epoch) != len(history):
            raise _bad(path, f"its epoch counter says {int(epoch)} epochs done, its "
                             f"history{of} holds {len(history)}", fix, kind)
    return list(history)


def check_histories(histories: Any, path: str | os.PathLike[str], names: Sequence[str], *,
                    epoch: Any = None, fix: str = DEFAULT_FIX, kind: str = "checkpoint"
                    ) -> list[list[dict]]:
    """A fleet's histories: one :func:`check_history` per member (``names``), all of the
    checkpoint's ``epoch`` epochs."""
    if not isinstance(histories, list) or len(histories) != len(names):
        got = (f"{len(histories)} histories" if isinstance(histories, list)
               else f"a {type(histories).__name__}")
        raise _bad(path, f"it holds {got} for {len(names)} members", fix, kind)
    return [check_history(h, path, epoch=epoch, fix=fix, kind=kind, who=repr(name))
            for h, name in zip(histories, names)]


def check_rng(rng: Any, names: Iterable[str], path: str | os.PathLike[str], *,
              fix: str = DEFAULT_FIX, who: str = "") -> None:
    """``rng`` must map each of ``names`` to a generator state (a 1-D uint8 tensor)."""
    of = f" of {who}" if who else ""
    if not isinstance(rng, Mapping):
        raise _bad(path, f"its random generator states{of} are a {type(rng).__name__}, not a "
                         "dict", fix)
    for name in names:
        s = rng.get(name)
        if not (isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.dim() == 1
                and s.numel() > 0):
            what = (f"it lacks the state of the random generator {name!r}{of}" if s is None
                    else f"the state of its random generator {name!r}{of} is malformed")
            raise _bad(path, what, fix)


def check_rngs(rngs: Any, members: Sequence[str], names: Iterable[str],
               path: str | os.PathLike[str], *, fix: str = DEFAULT_FIX) -> None:
    """A fleet's generator states: a list with one :func:`check_rng` dict per member."""
    if not isinstance(rngs, list) or len(rngs) != len(members):
        raise _bad(path, f"it holds no list of random generator states for its "
                         f"{len(members)} members", fix)
    names = tuple(names)
    for member, rng in zip(members, rngs):
        check_rng(rng, names, path, fix=fix, who=repr(member))


def check_model_config(mc: Any, path: str | os.PathLike[str], *, fix: str = DEFAULT_FIX
                       ) -> dict:
    """A stored model configuration: ``x_dim`` (a positive integer), ``layers`` (lists of
    positive integers) and ``likelihood`` ("bernoulli" or "gaussian")."""
    if not isinstance(mc, Mapping):
        raise _bad(path, f"its model_config is a {type(mc).__name__}, not a dict", fix)
    x_dim, layers, lik = mc.get("x_dim"), mc.get("layers"), mc.get("likelihood", "bernoulli")
    if not (_is_int(x_dim) and x_dim > 0):
        raise _bad(path, f"its model_config has x_dim {x_dim!r}", fix)
    if not (isinstance(layers, (list, tuple)) and layers and all(
            isinstance(s, (list, tuple)) and s and all(_is_int(v) and v > 0 for v in s)
            for s in layers)):
        raise _bad(path, f"its model_config has layers {layers!r}", fix)
    if lik not in ("bernoulli", "gaussian"):
        raise _bad(path, f"its model_config has likelihood {lik!r}", fix)
    return {"x_dim": int(x_dim), "layers": [[int(v) for v in s] for s in layers],
            "likelihood": lik}


def check_config_matches(cfg: Any, state: Mapping, cfg_path: str | os.PathLike[str],
                         ckpt_path: str | os.PathLike[str]) -> None:
    """``config.json`` (the :class:`~iwae_tutorial.runs.RunConfig` ``cfg``) must
    describe the model of the checkpoint ``state``, which is the truth: the layers of its
    ``model_config`` and, where the checkpoint has a training fingerprint, the objective,
    k, seed, batch size and number of training images. Else one line naming both files."""
    diffs = []
    mc = state.get("model_config")
    if isinstance(mc, Mapping):
        layers = [[int(v) for v in s] for s in mc.get("layers", [])]
        if layers != [[int(v) for v in s] for s in cfg.layers]:
            diffs.append(f"layers {cfg.layers} there, {layers} in the checkpoint")
    fp = state.get("fingerprint")
    if isinstance(fp, Mapping):
        for key, mine in (("objective", cfg.objective), ("k", cfg.k), ("seed", cfg.seed),
                          ("batch_size", cfg.batch_size), ("n", cfg.n_train)):
            if key in fp and mine is not None and fp[key] != mine:
                diffs.append(f"{key} {mine!r} there, {fp[key]!r} in the checkpoint")
    if diffs:
        raise CheckpointError(
            f"{cfg_path} does not describe the model in {ckpt_path} ({'; '.join(diffs)}); "
            "the checkpoint is the truth: restore config.json to the checkpoint's settings, "
            "or delete the run directory and train it again")


def check_stage_scores(stages: Mapping, path: str | os.PathLike[str]) -> dict:
    """``reproduce``'s saved stage results: each stage's per-image L_k (``ll``) a tensor of
    finite values, else a CheckpointError naming ``path`` (nothing is retrained)."""
    fix = "delete it to score the saved stages again (nothing is retrained)"
    need = ("part", "epochs", "histories", "ll", "active_units", "active_units_variances",
            "active_units_n", "seconds", "weights", "checkpoint", "provenance")
    for key, entry in stages.items():
        missing = [k for k in need if k not in entry] if isinstance(entry, Mapping) else need
        if missing:
            raise CheckpointError(f"the saved stage results {path} are damaged (stage {key} "
                                  f"lacks {', '.join(missing)}); {fix}")
        ll = entry["ll"]
        if not isinstance(ll, torch.Tensor) or not bool(torch.isfinite(ll).all()):
            raise CheckpointError(f"the saved stage results {path} hold no finite L_k for "
                                  f"{key}; {fix}")
    return dict(stages)


def check_finite_weights(weights: Mapping[str, Any], path: str | os.PathLike[str], *,
                         fix: str = "train it again (train --restart)") -> None:
    """A CheckpointError naming ``path`` when a floating-point weight is NaN or infinite."""
    bad = [name for name, t in weights.items() if isinstance(t, torch.Tensor)
           and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"the model in {path} has NaN or infinite weights ({bad[0]}"
                              f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); it "
                              f"cannot be scored: {fix}")
