"""Finding, downloading and verifying data files; the :class:`DataError` every loader raises.

The lowest layer of :mod:`iwae_tutorial.data`: the data-set modules import from here, never
the reverse. See the package docstring for where the data lives.

- Search: :func:`data_search_dirs` (``root``, ``$IWAE_DATA_DIR``, the user cache) and
  :func:`find_data_dir`.
- :func:`first_good` is how every loader gets at a file: it tries the copy in each search
  directory in turn and uses the first one that loads (checksum and parse); a bad copy in an
  earlier directory is skipped with one :class:`DataWarning` naming it. Only when no
  directory has the file at all is it downloaded (:func:`ensure_file`).
- Downloads (:func:`_download`) are read into memory and verified against their checksum
  before anything is written; the verified bytes are then written by the project's one
  atomic writer, :func:`iwae_tutorial.checkpoints.write_atomic` (a ``mkstemp`` file
  ``.NAME.XXXX.part`` next to the final name, fsync, :func:`os.replace`). Before a download,
  ``.part`` files of the same name untouched for :data:`STALE_PART_AGE_S` are removed: they
  were left by a killed process (a live write of a few MB takes well under a second).
- Every read goes through :func:`read_bytes`, so an unreadable file is a :class:`DataError`
  too.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import time
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..checkpoints import write_atomic

ENV_VAR = "IWAE_DATA_DIR"
APP_NAME = "iwae-tutorial"
DOWNLOAD_TIMEOUT_S = 60.0
"""Timeout (seconds) of each network operation of a download."""

STALE_PART_AGE_S = 3600.0
"""A download's temporary ``.part`` file untouched this long (seconds) is left over from a
killed process and is removed before the next download of that file. A download writes its
(already verified) bytes in well under a second, so this never removes the file of a
download in progress."""

DATA_DIR_FIX = f"pass --data-dir DIR (root=DIR in Python) or set {ENV_VAR}=DIR"
"""How a user points the loaders at another data directory, for both audiences."""

ALLOW_DOWNLOAD_FIX = "allow downloads (drop --no-download; download=True in Python)"
"""How a user allows downloads, for both audiences."""

T = TypeVar("T")


class DataError(RuntimeError):
    """A data file is missing, cannot be downloaded, is truncated/corrupt, or fails its checksum.

    The message is always one line: it names the file, the folders searched and the fix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).splitlines()))


class DataWarning(UserWarning):
    """A bad copy of a data file was skipped because a later data directory has a good one."""


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """The per-user cache directory, ``platformdirs.user_cache_dir("iwae-tutorial")``.

    Without :mod:`platformdirs` (e.g. a bare GPU machine): ``$XDG_CACHE_HOME/iwae-tutorial``
    if that variable is an absolute path, else ``~/.cache/iwae-tutorial``.
    """
    try:
        import platformdirs
    except ImportError:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
        return base / APP_NAME
    return Path(platformdirs.user_cache_dir(APP_NAME))


def data_search_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Data directories, in search order: ``root``, then ``$IWAE_DATA_DIR``, then the cache dir.

    Duplicates are removed; the directories need not exist.
    """
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(_cache_dir())
    unique: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        key = d.absolute()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


@dataclass(frozen=True)
class FileSpec:
    """One data file: where it lives, what it may be called on disk, where to get it, its hash.

    ``digest`` is of the uncompressed bytes when ``of_uncompressed`` (MNIST IDX files, which
    may be stored gzipped or not), else of the file's bytes.
    """

    dataset: str
    name: str
    alternatives: tuple[str, ...]
    urls: tuple[str, ...]
    algo: str
    digest: str
    of_uncompressed: bool = False


def _first_existing(directory: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        p = directory / n
        if p.is_file():
            return p
    return None


def find_data_dir(
    dataset: str,
    required: Sequence[str | Sequence[str]] = (),
    root: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The first ``<data dir>/<dataset>`` folder (search order of :func:`data_search_dirs`)
    that holds every file in ``required``; ``None`` if there is none.

    Args:
        dataset: subfolder name, e.g. ``"mnist"``, ``"binarized_mnist"``, ``"omniglot28"``.
        required: file names; an entry may be a sequence of alternative names, e.g.
            ``("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")``. A name with a
            MNIST IDX stem is accepted gzipped or not.
        root: explicit data directory searched first.
    """
    for base in data_search_dirs(root):
        d = base / dataset
        if not d.is_dir():
            continue
        ok = True
        for req in required:
            alts = (req,) if isinstance(req, str) else tuple(req)
            alts = tuple(dict.fromkeys(a for n in alts for a in _gz_alternatives(n)))
            if _first_existing(d, alts) is None:
                ok = False
                break
        if ok:
            return d
    return None


def _gz_alternatives(name: str) -> tuple[str, ...]:
    if "-idx" in name:
        stem = name[:-3] if name.endswith(".gz") else name
        return (stem + ".gz", stem)
    return (name,)


def searched_text(dirs: Sequence[Path], dataset: str) -> str:
    return ", ".join(str(d / dataset) for d in dirs)


def _fix_text(spec: FileSpec, after_failed_download: bool = False) -> str:
    txt = (
        f"set {ENV_VAR} to a folder DIR containing {spec.dataset}/{spec.name}, "
        "or pass --data-dir DIR (root=DIR in Python)"
    )
    if spec.urls and after_failed_download:
        txt += ", or retry where the download sources are reachable"
    elif spec.urls:
        txt += f", or {ALLOW_DOWNLOAD_FIX}; this needs network access"
    return txt


def good_copy_text(what: str) -> str:
    """How to point the loaders at a folder holding a good copy, for CLI and Python users."""
    return f"{DATA_DIR_FIX}, a folder holding a good copy of {what}"


def locate_all(spec: FileSpec, root: str | os.PathLike[str] | None) -> list[Path]:
    """The copy of ``spec`` in each search directory that has one, in search order."""
    found: list[Path] = []
    for base in data_search_dirs(root):
        p = _first_existing(base / spec.dataset, spec.alternatives)
        if p is not None:
            found.append(p)
    return found


def _locate(spec: FileSpec, root: str | os.PathLike[str] | None) -> Path | None:
    found = locate_all(spec, root)
    return found[0] if found else None


def _is_writable_dir(d: Path) -> bool:
    """Whether files can be created in the existing directory ``d``.

    Besides ``os.access`` (which is always true for root), a directory with no write permission
    bit at all is treated as read-only, so a shared data folder marked ``r-x`` is never written
    to, even by root.
    """
    try:
        st = d.stat()
    except OSError:
        return False
    return d.is_dir() and bool(st.st_mode & 0o222) and os.access(d, os.W_OK | os.X_OK)


def _can_create_dir(d: Path) -> bool:
    """Whether ``d`` exists and is writable, or could be created under a writable ancestor."""
    p = d
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return _is_writable_dir(p)


def _download_dir(spec: FileSpec, root: str | os.PathLike[str] | None) -> Path | None:
    """First writable ``<data dir>/<dataset>`` of the search order (not created here)."""
    for base in data_search_dirs(root):
        d = base / spec.dataset
        if _can_create_dir(d):
            return d
    return None


def _make_dirs(d: Path) -> list[Path]:
    """``mkdir -p d``; returns the directories it created, deepest first."""
    created: list[Path] = []
    p = d
    while not p.exists():
        created.append(p)
        p = p.parent
    d.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty_dirs(dirs: Sequence[Path]) -> None:
    for p in dirs:  # deepest first
        try:
            p.rmdir()
        except OSError:
            break


# --------------------------------------------------------------------------------------------
# Reading and verifying
# --------------------------------------------------------------------------------------------


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``; an unreadable file is a :class:`DataError` naming it and the fix."""
    try:
        return Path(path).read_bytes()
    except PermissionError as err:
        raise DataError(
            f"Cannot read {path}: permission denied ({err.strerror or err}). Make it readable "
            f"(chmod a+r {path}), or {DATA_DIR_FIX}, a folder holding a readable copy."
        ) from err
    except OSError as err:
        raise DataError(
            f"Cannot read {path} ({err}). Check the file and its folder, or "
            f"{good_copy_text(Path(path).name)}."
        ) from err


def stat_key(path: Path) -> tuple[str, int, int]:
    """``(resolved path, mtime_ns, size)``: the key of the loaders' caches."""
    try:
        st = path.stat()
        return (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError as err:
        raise DataError(
            f"Cannot read {path} ({err}). To fix: {good_copy_text(path.name)}."
        ) from err


def maybe_gunzip(raw: bytes, path: Path | str) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{path} is a truncated or corrupt gzip file ({err}). Delete it and download it "
                f"again, or {good_copy_text(Path(path).name)}."
            ) from err
    return raw


def _digest_of(path: Path, spec: FileSpec) -> str:
    return _digest_of_bytes(read_bytes(path), spec, path)


def _digest_of_bytes(raw: bytes, spec: FileSpec, where: Path | str) -> str:
    if spec.of_uncompressed:
        raw = maybe_gunzip(raw, where)
    return hashlib.new(spec.algo, raw).hexdigest()


def _checksum_error(path: Path, spec: FileSpec, got: str) -> DataError:
    what = f"{spec.algo} of the uncompressed bytes" if spec.of_uncompressed else spec.algo
    remedy = (
        "Delete it and load again with downloads allowed (drop --no-download; "
        "download=True in Python)" if spec.urls
        else "Replace it with a good copy"
    )
    return DataError(
        f"Checksum mismatch for {path}: {what} is {got}, expected {spec.digest}. "
        f"The file is corrupt, truncated or a different version. {remedy}, or "
        f"{_fix_text(spec)}."
    )


_VERIFIED: set[tuple[tuple[str, int, int], str, str]] = set()


def verify_file(path: Path, spec: FileSpec) -> None:
    """Check the digest of ``path`` (once per process per file version) or raise DataError."""
    key = (stat_key(path), spec.algo, spec.digest)
    if key in _VERIFIED:
        return
    got = _digest_of(path, spec)
    if got != spec.digest:
        raise _checksum_error(path, spec, got)
    _VERIFIED.add(key)


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def _urlopen(url: str, timeout: float) -> Any:
    """Open ``url`` (a seam for tests, which monkeypatch it). Returns a readable context manager."""
    req = urllib.request.Request(url, headers={"User-Agent": f"{APP_NAME}/0.1 (python urllib)"})
    return urllib.request.urlopen(req, timeout=timeout)


def _remove_stale_parts(target_dir: Path, name: str,
                        max_age_s: float = STALE_PART_AGE_S) -> list[Path]:
    """Remove ``target_dir/.NAME.*.part`` files not modified for ``max_age_s`` seconds.

    These are the temporary files of downloads of ``name`` killed before they could clean up.
    Younger ones may belong to a download running right now and are kept; so are the
    temporary files of other names. Returns the files removed.
    """
    removed: list[Path] = []
    now = time.time()
    for p in target_dir.glob(f".{glob.escape(name)}.*.part"):
        try:
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and now - st.st_mtime > max_age_s:
                p.unlink()
                removed.append(p)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _download(spec: FileSpec, target_dir: Path, searched: Sequence[Path]) -> Path:
    """Download ``spec`` into ``target_dir`` atomically (temp file, fsync, verify, rename)."""
    final = target_dir / spec.name
    _remove_stale_parts(target_dir, spec.name)
    errors: list[str] = []
    last_err: BaseException | None = None
    for url in spec.urls:
        try:
            chunks = []
            with _urlopen(url, DOWNLOAD_TIMEOUT_S) as resp:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
            raw = b"".join(chunks)  # data files are a few MB: verified before anything is kept
            got = _digest_of_bytes(raw, spec, url)
            if got != spec.digest:
                raise DataError(
                    f"checksum mismatch for the downloaded {spec.name}: {spec.algo} is {got}, "
                    f"expected {spec.digest}"
                )
            return write_atomic(final, lambda f, raw=raw: f.write(raw), suffix=".part")
        except Exception as err:  # try the next mirror; report all failures together
            last_err = err
            errors.append(f"{url}: {err}")
    raise DataError(
        f"Could not download {spec.dataset}/{spec.name} into {target_dir} "
        f"({'; '.join(errors)}). Nothing was written. To fix: {_fix_text(spec, True)}. "
        f"Directories searched: {searched_text(searched, spec.dataset)}."
    ) from last_err


def ensure_file(
    spec: FileSpec,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    hint: str = "",
) -> Path:
    """Path of ``spec`` found on disk, else downloaded (if allowed), else :class:`DataError`.

    Files found on disk are not verified here (loaders verify what they read, see
    :func:`first_good`); downloads are.
    """
    searched = data_search_dirs(root)
    found = _locate(spec, root)
    if found is not None:
        return found
    if download and spec.urls:
        target = _download_dir(spec, root)
        if target is None:
            raise DataError(
                f"Data file {spec.dataset}/{spec.name} not found and no writable directory to "
                f"download it to. Directories searched: {searched_text(searched, spec.dataset)}. "
                f"To fix: {_fix_text(spec)}.{hint}"
            )
        try:
            created = _make_dirs(target)
        except OSError as err:
            raise DataError(
                f"Data file {spec.dataset}/{spec.name} not found and cannot create {target} to "
                f"download it ({err}). Directories searched: "
                f"{searched_text(searched, spec.dataset)}. To fix: {_fix_text(spec)}.{hint}"
            ) from err
        try:
            return _download(spec, target, searched)
        except DataError as err:
            _remove_empty_dirs(created)  # leave nothing behind after a failed download
            if hint:
                raise DataError(f"{err}{hint}") from err.__cause__
            raise
        except OSError as err:  # e.g. the temporary file cannot be created
            _remove_empty_dirs(created)
            raise DataError(
                f"Could not download {spec.dataset}/{spec.name} into {target} ({err}). "
                f"Directories searched: {searched_text(searched, spec.dataset)}. "
                f"To fix: {_fix_text(spec)}.{hint}"
            ) from err
    why = (
        "downloads are off: --no-download, download=False in Python" if spec.urls
        else "no public download source for this file"
    )
    raise DataError(
        f"Data file {spec.dataset}/{spec.name} not found ({why}). Directories searched: "
        f"{searched_text(searched, spec.dataset)}. To fix: {_fix_text(spec)}.{hint}"
    )
