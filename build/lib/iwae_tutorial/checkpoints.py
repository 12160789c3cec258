"""Every file the project writes, written one way; checkpoints read safely; run directories locked.

- :func:`write_atomic` is the one writer: a uniquely named temporary file in the target's own
  folder, flushed and fsync'ed, then :func:`os.replace` (and the folder fsync'ed). A reader
  never sees half a file, two writers never share a temporary name, and a failed write leaves
  the old file as it was. :func:`save_tensors`, :func:`write_json_atomic` and
  :func:`write_text_atomic` are thin wrappers around it.
- :func:`load_tensors` reads a checkpoint with ``torch.load(..., weights_only=True)``: tensors,
  numbers, strings, lists and dicts only, so a planted pickle cannot run code. Anything else
  (a foreign, truncated or corrupt file) is a :class:`CheckpointError`: one line naming the
  file and what to do.
- :class:`RunDirLock`: one process at a time in a run directory (``fcntl.flock`` on
  ``DIR/.lock``; the lock dies with its process, ``kill -9`` included).
- :func:`sync_log`: make ``log.jsonl`` hold exactly the entries a checkpoint vouches for
  (a kill between the checkpoint and the log line would otherwise lose that line).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CheckpointError", "RunDirLockedError", "write_atomic", "write_json_atomic",
    "write_text_atomic", "save_tensors", "load_tensors", "RunDirLock", "sync_log",
    "check_writable", "json_text", "save_sharded", "load_sharded", "SHARD_BYTES",
]

#: the largest file :func:`save_sharded` writes (what comes back from a device command)
SHARD_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint (or another file the project wrote) cannot be read: one line, with the fix."""


class RunDirLockedError(RuntimeError):
    """Another process is using the run directory."""


# ------------------------------------------------------------------------------ writing
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None],
                 mode: int = 0o644, suffix: str = ".tmp") -> Path:
    """Write ``path`` atomically: ``write(f)`` into a uniquely named temporary file in the same
    folder (``.NAME.XXXX.tmp``, or ``suffix``), flush, fsync, :func:`os.replace`, fsync the
    folder.

    On any error (a full disk, a kill, an exception in ``write``) the temporary file is
    removed (except after ``kill -9``: a later writer never reuses its name) and ``path`` is
    unchanged. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.chmod(tmp, mode)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors and numpy arrays/scalars
        return obj.tolist()
    if hasattr(obj, "_asdict"):
        return obj._asdict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON: non-finite floats as ``null``, tensors and arrays as lists."""
    plain = json.loads(json.dumps(obj, default=_json_default))
    return json.dumps(_finite_or_none(plain), indent=2, allow_nan=False) + "\n"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`write_atomic`."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (see :func:`json_text`) with :func:`write_atomic`."""
    return write_text_atomic(path, json_text(obj))


def save_tensors(path: str | os.PathLike[str], state: dict) -> Path:
    """``torch.save(state)`` to ``path`` with :func:`write_atomic`. ``state`` must hold only
    what :func:`load_tensors` reads back: tensors, numbers, strings, None, lists, dicts."""
    return write_atomic(path, lambda f: torch.save(state, f))


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


def _read_index(directory: Path) -> dict | None:
    if not (directory / "index.pt").exists():
        return None
    return load_tensors(directory / "index.pt", what="state index")


def load_sharded(directory: str | os.PathLike[str], map_location: Any = "cpu") -> dict:
    """Read a state written by :func:`save_sharded` (safely: ``weights_only=True``)."""
    directory = Path(directory)
    index = _read_index(directory)
    if index is None:
        raise FileNotFoundError(f"no saved state (index.pt) in {directory}")
    flat: dict[str, torch.Tensor] = {}
    for name in index["shards"]:
        flat.update(load_tensors(directory / name, map_location=map_location,
                                 what="state shard", fix="delete the folder to start afresh"))
    tensors = {}
    for key, n_parts in index["parts"].items():
        chunks = [flat[f"{key}#{i}"] for i in range(n_parts)]
        tensors[key] = chunks[0] if n_parts == 1 else torch.cat(chunks)
    return _unflatten(index["skeleton"], tensors)


# ------------------------------------------------------------------------------ reading
def load_tensors(path: str | os.PathLike[str], map_location: Any = "cpu",
                 what: str = "checkpoint", fix: str | None = None) -> dict:
    """Read a file written by :func:`save_tensors` with ``weights_only=True`` (no pickled code).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is not a checkpoint of this project (foreign, truncated,
            corrupt, or holding pickled objects, which are refused): one line naming the file
            and ``fix`` (default: delete it to start afresh).
    """
    path = Path(path)
    fix = fix or "delete it to start afresh"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except PermissionError:
        raise CheckpointError(f"cannot read the {what} {path}: permission denied; make it "
                              "readable") from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, foreign, or unsafe pickle
        refused = "weights only load failed" in str(e).lower()
        why = ("it holds Python objects other than tensors and plain data, which are refused "
               "(loading them could run code)" if refused
               else f"it is truncated, corrupt or not a checkpoint ({type(e).__name__})")
        raise CheckpointError(f"cannot read the {what} {path}: {why}; {fix}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read the {what} {path}: it holds a "
                              f"{type(state).__name__}, not a checkpoint's dict; {fix}")
    return state


def check_writable(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Fail early, before any computing, when the file ``path`` cannot be written: it is a
    folder, or its folder cannot be created or written. Raises ``OSError`` with one line."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name, e.g. "
                                f"{path / 'result.json'}")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # nothing is created here: probe the nearest folder
    if not existing.is_dir():
        raise NotADirectoryError(f"{option} {path}: {existing} is a file, not a folder; "
                                 "choose another place")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"{option} {path}: cannot write into {existing} "
                              f"({e.strerror or e}); choose a writable place") from None
    return path


# ------------------------------------------------------------------------------ locking
_held: dict[Path, list] = {}  # locks this process holds: path -> [file object, depth]


class RunDirLock:
    """Hold ``DIR/.lock`` while a process works in run directory ``DIR``.

    A second process gets :class:`RunDirLockedError` at once (naming the holder's PID); the
    same process may nest locks of one directory (train_run -> fit). The lock is released when
    the block ends or the process dies. Where ``fcntl`` does not exist (Windows) it does
    nothing.
    """

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike[str], option: str = "the run directory"):
        self.directory = Path(directory)
        self.option = option
        self.path = (self.directory / self.NAME).resolve()

    def __enter__(self) -> RunDirLock:
        entry = _held.get(self.path)
        if entry is not None:
            entry[1] += 1
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            _held[self.path] = [None, 1]
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirLockedError(
                f"{self.directory} is in use by {holder}; wait for it to finish or use "
                f"another {self.option}") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}\n")
        f.flush()
        _held[self.path] = [f, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        entry = _held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.path]
            if entry[0] is not None:
                entry[0].close()  # closing releases the flock


# ------------------------------------------------------------------------------ logs
def sync_log(path: str | os.PathLike[str], entries: Sequence[dict]) -> None:
    """Make the JSON-lines file ``path`` hold exactly ``entries`` (one per line).

    Called on resume with the history a checkpoint holds: a kill between writing the
    checkpoint and appending its log line (or in the middle of that line) leaves the log
    short or torn; this rewrites it (atomically) only when it differs.
    """
    path = Path(path)
    want = [json.dumps(e) for e in entries]
    try:
        have = path.read_text().splitlines()
    except FileNotFoundError:
        have = None
    if have == want:
        return
    write_text_atomic(path, "".join(line + "\n" for line in want))
