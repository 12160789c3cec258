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

import errno
import json
import math
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CheckpointError", "RunDirLockedError", "write_atomic", "write_json_atomic",
    "write_text_atomic", "save_tensors", "load_tensors", "RunDirLock", "sync_log",
    "check_writable", "json_text", "UnsafeLockError", "WRITE_FIX",
]



class CheckpointError(RuntimeError):
    """A checkpoint (or another file the project wrote) cannot be read: one line, with the fix."""


class RunDirLockedError(RuntimeError):
    """Another process is using the run directory."""


class UnsafeLockError(RunDirLockedError):
    """The run directory's lock file is a symbolic link or not a plain file: refused, and
    its target is left untouched."""


#: what to do when a file cannot be written (a full disk, a quota, a file-size limit)
WRITE_FIX = ("check that the disk has free space (and no quota or file-size limit is "
             "reached), or write elsewhere")


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


_writing: set[str] = set()  # temporary files this process is writing now


def _with_name(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its file name when it names none (``os.fsync`` and
    ``file.write`` errors do not), so the one-line message says which file."""
    if e.filename:
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))


def _write_failed(e: BaseException, path: Path) -> OSError:
    """A ``RuntimeError`` of ``torch.save`` (a full disk reads "unexpected pos ...", "file
    write failed") as an ``OSError`` naming ``path``: ENOSPC when the message or the disk
    says it is full, else EIO with the message's first line."""
    text = str(e).strip()
    first = text.splitlines()[0][:160] if text else type(e).__name__
    low = text.lower()
    code = errno.EIO
    if "no space left" in low:
        code = errno.ENOSPC
    elif "quota" in low:
        code = errno.EDQUOT
    elif "file too large" in low:
        code = errno.EFBIG
    else:
        try:
            if shutil.disk_usage(path.parent).free < (16 << 20):
                code = errno.ENOSPC
        except OSError:
            pass
    reason = os.strerror(code) if code != errno.EIO else f"the write failed ({first})"
    return OSError(code, reason, str(path))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def _remove_stale(path: Path, suffix: str) -> None:
    """Remove the temporary files of earlier writes of ``path`` that can no longer finish (a
    write killed half way): those of a process that is gone (the writer's PID is in the
    name), or of this process but not being written now; a name without a PID (an older
    version's) only when it is over an hour old."""
    prefix = f".{path.name}."
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for p in entries:
        n = p.name
        if (not n.startswith(prefix) or not n.endswith(suffix) or str(p) in _writing
                or len(n) <= len(prefix) + len(suffix)):
            continue
        rest = n[len(prefix):len(n) - len(suffix)]
        head, dot, _ = rest.partition(".")
        try:
            if dot and head.isdigit():  # .NAME.PID.XXXX.tmp
                if int(head) != os.getpid() and _pid_alive(int(head)):
                    continue
            elif "." in rest or time.time() - p.lstat().st_mtime < 3600:
                continue  # another file's temporary, or maybe a live writer's
            if p.is_file() or p.is_symlink():
                p.unlink()
        except OSError:
            pass


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None],
                 mode: int = 0o644, suffix: str = ".tmp") -> Path:
    """Write ``path`` atomically: ``write(f)`` into a uniquely named temporary file in the same
    folder (``.NAME.PID.XXXX.tmp``, or ``suffix``), flush, fsync, :func:`os.replace`, fsync
    the folder.

    On any error (a full disk, a kill, an exception in ``write``) the temporary file is
    removed and ``path`` is unchanged; the temporary files a ``kill -9`` left behind are
    removed by the next successful write of ``path``. Write errors are an ``OSError``
    naming ``path`` (a ``RuntimeError`` of ``torch.save`` on a full disk included), so the
    command line reports them as one line with the fix. Returns ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=suffix)
    except OSError as e:
        raise _with_name(e, path) from e
    _writing.add(tmp)
    try:
        os.chmod(tmp, mode)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _with_name(e, path) from e
        if isinstance(e, RuntimeError) and not isinstance(e, (CheckpointError,
                                                              RunDirLockedError)):
            raise _write_failed(e, path) from e
        raise
    finally:
        _writing.discard(tmp)
    _fsync_dir(path.parent)
    _remove_stale(path, suffix)
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
    """``obj`` as indented JSON: non-finite floats as ``null``, tensors and arrays as lists; a
    list of plain values (numbers, strings) on one line, so that result files with per-image
    or per-unit values stay small and readable."""
    plain = json.loads(json.dumps(obj, default=_json_default))
    return _indented(_finite_or_none(plain), 0) + "\n"


def _indented(obj: Any, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {_indented(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + _indented(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


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
        raise FileNotFoundError(f"no {what} at {path}; check the path, or restore the file "
                                "from where it was written") from None
    except PermissionError:
        raise CheckpointError(f"cannot read the {what} {path}: permission denied; make it "
                              "readable") from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, foreign, or unsafe pickle
        low = str(e).lower()
        refused = "weights only load failed" in low and ("unsupported global" in low or
                                                        "unsupported class" in low or
                                                        "allowed global" in low)
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
        # the folder resolved, not the lock file: a link named .lock is never followed
        self.path = self.directory.resolve() / self.NAME

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
        f = self._open()
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

    def _open(self) -> IO[str]:
        """Open (or create) the lock file without following a symbolic link, and only if it
        is a plain file: a link or another kind of file is refused, its target untouched."""
        fix = f"remove {self.path} (the lock must be a plain file), or use another {self.option}"
        flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISLNK(mode):
            raise UnsafeLockError(f"the lock file {self.path} is a symbolic link; {fix}")
        if mode is not None and not stat.S_ISREG(mode):
            raise UnsafeLockError(f"the lock file {self.path} is not a plain file; {fix}")
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW: it became a link since the check
                raise UnsafeLockError(f"the lock file {self.path} is a symbolic link; "
                                      f"{fix}") from None
            raise _with_name(e, self.path) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            os.close(fd)
            what = "not a plain file" if not stat.S_ISREG(st.st_mode) else (
                "a hard link to another file (it would be overwritten)")
            raise UnsafeLockError(f"the lock file {self.path} is {what}; {fix}")
        return os.fdopen(fd, "r+")

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
