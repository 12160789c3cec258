"""A state too large for one file, in shards: :func:`save_sharded` writes nested dicts/lists of
tensors as shard files of at most :data:`SHARD_BYTES` plus an ``index.pt`` (atomic as a whole:
a reader sees the old state or the new one), :func:`load_sharded` reads and checks them. A
device command returns files of at most 16 MiB: the fast trainer's state travels this way."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, load_tensors, save_tensors

__all__ = ["save_sharded", "load_sharded", "SHARD_BYTES"]

#: the largest file :func:`save_sharded` writes (what comes back from a device command)
SHARD_BYTES = 16 << 20


def _flatten(state: Any, prefix: str, out: dict[str, torch.Tensor]) -> Any:
    """``state`` with every tensor replaced by its key in ``out`` ({"__tensor__": key})."""
    if isinstance(state, torch.Tensor):
        out[prefix] = state.detach().cpu()
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {k: _flatten(v, f"{prefix}/{k}", out) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", out) for i, v in enumerate(state)]
    return state


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tensor__"}:
            return tensors[skeleton["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_sharded(directory: str | os.PathLike[str], state: dict,
                 max_bytes: int = SHARD_BYTES, max_files: int = 8) -> list[Path]:
    """Write ``state`` (nested dicts/lists of tensors and plain data) into ``directory`` as
    shard files of at most ``max_bytes`` each plus ``index.pt`` (at most ``max_files`` files in
    all), so a run's whole state can travel in pieces of a bounded size.

    Atomic as a whole: the shards of a new save get new names (a generation number), the
    index is replaced last, and the previous generation's shards are removed after it; a
    reader (:func:`load_sharded`) sees the old state or the new one. A single tensor larger
    than ``max_bytes`` is split along its first dimension. Returns the files written.
    """
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    pieces: list[tuple[str, int, torch.Tensor]] = []  # (key, part, tensor)
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if nbytes <= max_bytes or t.dim() == 0 or t.shape[0] < 2:
            pieces.append((key, 0, t))
            continue
        rows = max(1, int(t.shape[0] * (max_bytes * 0.95) // nbytes))
        for part, chunk in enumerate(t.split(rows)):
            pieces.append((key, part, chunk.clone()))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    budget = max_bytes - (64 << 10)  # room for torch.save's own bookkeeping
    for key, part, t in sorted(pieces, key=lambda p: -p[2].numel() * p[2].element_size()):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > budget:
            shards.append({})
            size = 0
        shards[-1][f"{key}#{part}"] = t
        size += nbytes
    if len(shards) + 1 > max_files:
        raise ValueError(f"the state needs {len(shards) + 1} files of at most {max_bytes} "
                         f"bytes, more than {max_files}")
    old = _read_index(directory)
    generation = (old["generation"] + 1) if old is not None else 0
    names = [f"shard-{generation}-{i}.pt" for i in range(len(shards))]
    written = [save_tensors(directory / n, sh) for n, sh in zip(names, shards)]
    parts = {key: max(p for k, p, _ in pieces if k == key) + 1 for key in tensors}
    written.append(save_tensors(directory / "index.pt", {
        "generation": generation, "shards": names, "skeleton": skeleton, "parts": parts}))
    for p in directory.glob("shard-*.pt"):  # the previous generations
        if p.name not in names:
            p.unlink(missing_ok=True)
    return written


_SHARD_NAME = re.compile(r"shard-[0-9]+-[0-9]+\.pt")
_SHARD_FIX = "restore the folder as it was written, or delete it to start afresh"


def _read_index(directory: Path) -> dict | None:
    """The state index of ``directory``, checked: a generation number, plain shard file
    names inside the folder, a positive part count per tensor; None when there is none."""
    path = directory / "index.pt"
    if not path.exists():
        return None
    index = load_tensors(path, what="state index", fix=_SHARD_FIX)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"the state index {path} is damaged or was not written by "
                               f"this package ({what}); {_SHARD_FIX}")

    missing = [k for k in ("generation", "shards", "skeleton", "parts") if k not in index]
    if missing:
        raise bad(f"it lacks {', '.join(missing)}")
    gen, shards, parts = index["generation"], index["shards"], index["parts"]
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        raise bad(f"generation {gen!r}")
    if not isinstance(shards, list) or not all(
            isinstance(n, str) and _SHARD_NAME.fullmatch(n) for n in shards):
        raise bad(f"shard names {shards!r}: each must be a file name shard-G-I.pt inside "
                  "the folder")
    if not isinstance(parts, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
            for k, v in parts.items()):
        raise bad("the part counts are not positive integers")
    return index


def load_sharded(directory: str | os.PathLike[str], map_location: Any = "cpu") -> dict:
    """Read a state written by :func:`save_sharded` (safely: ``weights_only=True``), checked
    against its index: every shard it names exists, every tensor has its parts, and the
    skeleton names only tensors there are; else a CheckpointError naming the file."""
    directory = Path(directory)
    index = _read_index(directory)
    if index is None:
        raise FileNotFoundError(f"no saved state (index.pt) in {directory}; restore it, or "
                                "delete the folder to start afresh")
    where = directory / "index.pt"
    flat: dict[str, torch.Tensor] = {}
    for name in index["shards"]:
        shard = directory / name
        if not shard.is_file():
            raise CheckpointError(f"the state index {where} names the shard {shard}, which "
                                  f"is missing; {_SHARD_FIX}")
        part = load_tensors(shard, map_location=map_location, what="state shard",
                            fix=_SHARD_FIX)
        if not all(isinstance(t, torch.Tensor) for t in part.values()):
            raise CheckpointError(f"the state shard {shard} holds something other than "
                                  f"tensors; {_SHARD_FIX}")
        flat.update(part)
    tensors = {}
    for key, n_parts in index["parts"].items():
        absent = [f"{key}#{i}" for i in range(n_parts) if f"{key}#{i}" not in flat]
        if absent:
            raise CheckpointError(f"the state in {directory} lacks {absent[0]} (its index "
                                  f"{where} names {n_parts} part(s) of {key!r}); {_SHARD_FIX}")
        chunks = [flat[f"{key}#{i}"] for i in range(n_parts)]
        try:
            tensors[key] = chunks[0] if n_parts == 1 else torch.cat(chunks)
        except RuntimeError:
            raise CheckpointError(f"the parts of {key!r} in {directory} do not fit together; "
                                  f"{_SHARD_FIX}") from None
    try:
        return _unflatten(index["skeleton"], tensors)
    except (KeyError, TypeError):
        raise CheckpointError(f"the state index {where} has a skeleton naming tensors the "
                              f"shards do not hold; {_SHARD_FIX}") from None
