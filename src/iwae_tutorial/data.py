"""Data sets for the IWAE tutorial: MNIST, fixed-binarization MNIST, Omniglot and the 1-D camel.

Nothing is read or downloaded at import time.

Where the data lives
--------------------
Every data set lives in its own subfolder of a *data directory*::

    <data dir>/mnist/train-images-idx3-ubyte[.gz]     (and the three other IDX files)
    <data dir>/binarized_mnist/binarized_mnist.npz
    <data dir>/omniglot28/images_{background,evaluation}.{png,json}
    <data dir>/omniglot/chardata.mat

Data directories are searched in this order (:func:`data_search_dirs`):

1. the ``root`` argument of the loader, if given;
2. the environment variable ``IWAE_DATA_DIR``, if set;
3. the user cache directory, ``platformdirs.user_cache_dir("iwae-tutorial")``.

A file that is found nowhere is downloaded (when ``download=True`` and a public source
exists) into the first *writable* directory of that list: it is written to a temporary file
next to its final name, its checksum is verified, and only then is it renamed atomically with
:func:`os.replace`. A failed or corrupt download never leaves a file behind.

Every problem (missing file, failed download, checksum mismatch, truncated or corrupt file)
raises a single :class:`DataError` whose message names the file, the directories searched and
how to fix it.

Public API
----------
- :class:`DataError`, :func:`data_search_dirs`, :func:`find_data_dir`
- :func:`read_idx`
- :class:`MNIST`, :func:`load_mnist`, :func:`load_binarized_mnist`, :func:`dynamic_binarize`
- :class:`Omniglot`, :func:`load_omniglot`
- :func:`camel_sample`, :func:`camel_log_prob`, :func:`camel_expected_log_prob`,
  :func:`camel_entropy`, :func:`camel_data`
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "DataError",
    "data_search_dirs",
    "find_data_dir",
    "read_idx",
    "MNIST",
    "load_mnist",
    "load_binarized_mnist",
    "dynamic_binarize",
    "Omniglot",
    "load_omniglot",
    "camel_sample",
    "camel_log_prob",
    "camel_expected_log_prob",
    "camel_entropy",
    "camel_data",
    "MNIST_N_VALID",
    "CAMEL_MEANS",
    "CAMEL_STD",
]

ENV_VAR = "IWAE_DATA_DIR"
APP_NAME = "iwae-tutorial"
DOWNLOAD_TIMEOUT_S = 60.0
"""Timeout (seconds) of each network operation of a download."""

MNIST_N_VALID = 400
"""The last 400 of the 60,000 MNIST training images are the validation set (Burda et al.)."""


class DataError(RuntimeError):
    """A data file is missing, cannot be downloaded, is truncated/corrupt, or fails its checksum."""


# --------------------------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """The per-user cache directory, ``platformdirs.user_cache_dir("iwae-tutorial")``."""
    import platformdirs

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
class _FileSpec:
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


def _searched_text(dirs: Sequence[Path], dataset: str) -> str:
    return ", ".join(str(d / dataset) for d in dirs)


def _fix_text(spec: _FileSpec, after_failed_download: bool = False) -> str:
    txt = (
        f"set {ENV_VAR} to a folder containing {spec.dataset}/{spec.name}, "
        "or pass root=<that folder>"
    )
    if spec.urls and after_failed_download:
        txt += ", or retry where the download sources are reachable"
    elif spec.urls:
        txt += ", or allow download (download=True, needs network access)"
    return txt


def _locate(spec: _FileSpec, root: str | os.PathLike[str] | None) -> Path | None:
    for base in data_search_dirs(root):
        p = _first_existing(base / spec.dataset, spec.alternatives)
        if p is not None:
            return p
    return None


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


def _download_dir(spec: _FileSpec, root: str | os.PathLike[str] | None) -> Path | None:
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


def _urlopen(url: str, timeout: float) -> Any:
    """Open ``url`` (a seam for tests, which monkeypatch it). Returns a readable context manager."""
    req = urllib.request.Request(url, headers={"User-Agent": f"{APP_NAME}/0.1 (python urllib)"})
    return urllib.request.urlopen(req, timeout=timeout)


def _maybe_gunzip(raw: bytes, path: Path | str) -> bytes:
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{path} is a truncated or corrupt gzip file ({err}). Delete it and download it "
                f"again (or set {ENV_VAR} to a folder holding a good copy)."
            ) from err
    return raw


def _digest_of(path: Path, spec: _FileSpec) -> str:
    raw = path.read_bytes()
    if spec.of_uncompressed:
        raw = _maybe_gunzip(raw, path)
    return hashlib.new(spec.algo, raw).hexdigest()


def _checksum_error(path: Path, spec: _FileSpec, got: str, searched: Sequence[Path]) -> DataError:
    what = f"{spec.algo} of the uncompressed bytes" if spec.of_uncompressed else spec.algo
    remedy = (
        "Delete it and load again with download=True" if spec.urls
        else "Replace it with a good copy"
    )
    return DataError(
        f"Checksum mismatch for {path}: {what} is {got}, expected {spec.digest}. "
        f"The file is corrupt, truncated or a different version. {remedy}, or "
        f"{_fix_text(spec)}. Directories searched: "
        f"{_searched_text(searched, spec.dataset)}."
    )


def _download(spec: _FileSpec, target_dir: Path, searched: Sequence[Path]) -> Path:
    """Download ``spec`` into ``target_dir`` atomically (temp file, verify, ``os.replace``)."""
    final = target_dir / spec.name
    errors: list[str] = []
    last_err: BaseException | None = None
    for url in spec.urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=target_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, _urlopen(url, DOWNLOAD_TIMEOUT_S) as resp:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
            got = _digest_of(tmp, spec)
            if got != spec.digest:
                raise DataError(
                    f"checksum mismatch for the downloaded {spec.name}: {spec.algo} is {got}, "
                    f"expected {spec.digest}"
                )
            os.replace(tmp, final)
            return final
        except Exception as err:  # try the next mirror; report all failures together
            last_err = err
            errors.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)  # gone already after a successful os.replace
    raise DataError(
        f"Could not download {spec.dataset}/{spec.name} into {target_dir} "
        f"({'; '.join(errors)}). Nothing was written. To fix: {_fix_text(spec, True)}. "
        f"Directories searched: {_searched_text(searched, spec.dataset)}."
    ) from last_err


def _ensure_file(
    spec: _FileSpec,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    hint: str = "",
) -> Path:
    """Path of ``spec`` found on disk, else downloaded (if allowed), else :class:`DataError`.

    Files found on disk are not verified here (loaders verify what they read); downloads are.
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
                f"download it to. Directories searched: {_searched_text(searched, spec.dataset)}. "
                f"To fix: {_fix_text(spec)}.{hint}"
            )
        try:
            created = _make_dirs(target)
        except OSError as err:
            raise DataError(
                f"Data file {spec.dataset}/{spec.name} not found and cannot create {target} to "
                f"download it ({err}). Directories searched: "
                f"{_searched_text(searched, spec.dataset)}. To fix: {_fix_text(spec)}.{hint}"
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
                f"Directories searched: {_searched_text(searched, spec.dataset)}. "
                f"To fix: {_fix_text(spec)}.{hint}"
            ) from err
    why = "download=False" if spec.urls else "no public download source for this file"
    raise DataError(
        f"Data file {spec.dataset}/{spec.name} not found ({why}). Directories searched: "
        f"{_searched_text(searched, spec.dataset)}. To fix: {_fix_text(spec)}.{hint}"
    )


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _parse_idx(raw: bytes, path: Path | str) -> np.ndarray:
    fix = f"Delete {path} and download it again, or set {ENV_VAR} to a folder with a good copy."
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()!r}). {fix}")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its IDX header is incomplete. {fix}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "corrupt (trailing bytes)"
        raise DataError(
            f"{path} is {kind}: header says shape {shape} ({expected} bytes in all), "
            f"file has {len(raw)} bytes. {fix}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike[str], expected_md5: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or raw; detected from the content) into a numpy array.

    Args:
        path: the file.
        expected_md5: if given, the MD5 of the *uncompressed* bytes must match.

    Returns:
        Array of the shape in the header (e.g. ``[60000, 28, 28]`` uint8 for MNIST images,
        ``[60000]`` for labels), native byte order.

    Raises:
        DataError: bad magic number, truncated/corrupt file or gzip stream, or MD5 mismatch.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read IDX file {p}: {err}") from err
    raw = _maybe_gunzip(raw, p)
    if expected_md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != expected_md5:
            raise DataError(
                f"Checksum mismatch for {p}: md5 of the uncompressed bytes is {got}, expected "
                f"{expected_md5}. The file is corrupt or a different version; delete it and "
                f"download it again, or set {ENV_VAR} to a folder holding a good copy."
            )
    return _parse_idx(raw, p)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(key: tuple[str, int, int], expected_md5: str | None) -> np.ndarray:
    arr = read_idx(key[0], expected_md5)
    arr.flags.writeable = False  # shared between calls: never hand out a mutable cached array
    return arr


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------

_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _mnist_spec(stem: str, md5: str) -> _FileSpec:
    return _FileSpec(
        dataset="mnist",
        name=stem + ".gz",
        alternatives=(stem + ".gz", stem),
        urls=tuple(base + stem + ".gz" for base in _MNIST_URLS),
        algo="md5",
        digest=md5,
        of_uncompressed=True,
    )


MNIST_FILES: dict[str, _FileSpec] = {
    "train_images": _mnist_spec("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": _mnist_spec("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624"),
    "test_images": _mnist_spec("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": _mnist_spec("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637"),
}
"""The four MNIST IDX files; digests are MD5s of the uncompressed bytes."""


@dataclass(frozen=True, eq=False)
class MNIST:
    """An MNIST-shaped data set: train / valid / test splits.

    Attributes:
        x_train, x_valid, x_test: float32 ``[n, 784]`` in ``[0, 1]`` (row-major 28x28 images).
        y_train, y_valid, y_test: int64 ``[n]`` digit labels, or ``None`` when not available
            (fixed-binarization MNIST).
        name: ``"mnist"`` (grey values; binarize with :func:`dynamic_binarize`) or
            ``"binarized-mnist"`` (Larochelle's fixed binarization).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor | None
    x_valid: torch.Tensor
    y_valid: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    name: str = "mnist"


def _mnist_array(
    key: str, root: str | os.PathLike[str] | None, download: bool
) -> np.ndarray:
    spec = MNIST_FILES[key]
    path = _ensure_file(spec, root, download)
    try:
        return _read_idx_cached(_stat_key(path), spec.digest)
    except DataError as err:
        raise DataError(
            f"{err} Directories searched: {_searched_text(data_search_dirs(root), 'mnist')}."
        ) from err


def _to_unit_float(arr: np.ndarray, scale: float) -> torch.Tensor:
    x = np.array(arr.reshape(arr.shape[0], -1), dtype=np.float32)  # always a fresh copy
    t = torch.from_numpy(x)
    if scale != 1.0:
        t.div_(scale)
    return t


def _to_labels(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.int64))  # a fresh, writable copy


def load_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> MNIST:
    """Load MNIST grey values with the split of Burda et al.

    The 60,000 training images are split into train = the first 59,600 and valid = the last
    400; test = the 10,000 test images. The MD5s of the uncompressed IDX files are verified
    (once per process per file version; results are cached on (path, mtime, size)).

    Args:
        root: data directory searched first (it holds ``mnist/``); see :func:`data_search_dirs`.
        download: download missing files from the public mirrors.

    Returns:
        :class:`MNIST` with ``x_*`` float32 ``[n, 784]`` in ``[0, 1]`` and ``y_*`` int64 ``[n]``
        (n = 59,600 / 400 / 10,000). The tensors are fresh copies, safe to modify.

    Raises:
        DataError: missing file (and no download), failed download, checksum mismatch,
            truncated or corrupt file.
    """
    xtr = _mnist_array("train_images", root, download)
    ytr = _mnist_array("train_labels", root, download)
    xte = _mnist_array("test_images", root, download)
    yte = _mnist_array("test_labels", root, download)
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise DataError(
            f"MNIST images and labels disagree in count ({xtr.shape[0]} vs {ytr.shape[0]}, "
            f"{xte.shape[0]} vs {yte.shape[0]}). Check the files in "
            f"{_searched_text(data_search_dirs(root), 'mnist')}."
        )
    if xtr.shape[0] <= MNIST_N_VALID:
        raise DataError(f"MNIST training set too small ({xtr.shape[0]} images).")
    n_tr = xtr.shape[0] - MNIST_N_VALID
    x_all = _to_unit_float(xtr, 255.0)
    y_all = _to_labels(ytr)
    return MNIST(
        x_train=x_all[:n_tr],
        y_train=y_all[:n_tr],
        x_valid=x_all[n_tr:],
        y_valid=y_all[n_tr:],
        x_test=_to_unit_float(xte, 255.0),
        y_test=_to_labels(yte),
        name="mnist",
    )


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw per pixel: ``torch.bernoulli(x, generator=generator)``.

    Each call draws anew (dynamic binarization of Burda et al.).

    Args:
        x: grey values in ``[0, 1]``, any shape (e.g. ``[batch, 784]``), floating point.
        generator: optional ``torch.Generator`` on ``x``'s device, for reproducibility.

    Returns:
        Tensor of ``x``'s shape, dtype and device with values in ``{0, 1}``.
    """
    return torch.bernoulli(x, generator=generator)


# --------------------------------------------------------------------------------------------
# Fixed-binarization MNIST (Larochelle & Murray)
# --------------------------------------------------------------------------------------------

BINARIZED_MNIST_FILE = _FileSpec(
    dataset="binarized_mnist",
    name="binarized_mnist.npz",
    alternatives=("binarized_mnist.npz",),
    urls=(),
    algo="sha256",
    digest="7a049ae3a0d88e964af4b41bbdb14e4303595e1c5de65f8bd2455cdcebb3514b",
)
"""The npz file (its file sha256 varies with zip timestamps; the array hashes are checked)."""

BINARIZED_MNIST_ARRAYS: dict[str, tuple[tuple[int, int], str]] = {
    "train": ((50000, 784), "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a"),
    "valid": ((10000, 784), "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e"),
    "test": ((10000, 784), "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86"),
}
"""Shape and sha256 of the raw C-order uint8 bytes of each array in the npz."""


@functools.lru_cache(maxsize=2)
def _load_binarized_cached(key: tuple[str, int, int]) -> dict[str, np.ndarray]:
    path = key[0]
    fix = (
        f"Replace {path} with a good copy (arrays train/valid/test as in SOURCES.md) or set "
        f"{ENV_VAR} to a folder holding binarized_mnist/binarized_mnist.npz."
    )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in BINARIZED_MNIST_ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zlib.error) as err:
        raise DataError(f"Cannot read {path}: truncated or corrupt npz ({err}). {fix}") from err
    for k, (shape, sha) in BINARIZED_MNIST_ARRAYS.items():
        a = arrays[k]
        if a.shape != shape:
            raise DataError(f"{path}: array {k!r} has shape {a.shape}, expected {shape}. {fix}")
        a = np.ascontiguousarray(a, dtype=np.uint8)
        got = hashlib.sha256(a.tobytes()).hexdigest()
        if got != sha:
            raise DataError(
                f"Checksum mismatch for {path}: sha256 of array {k!r} is {got}, expected {sha}. "
                f"{fix}"
            )
        a.flags.writeable = False
        arrays[k] = a
    return arrays


def load_binarized_mnist(root: str | os.PathLike[str] | None = None) -> MNIST:
    """Load Larochelle & Murray's fixed-binarization MNIST (50,000 / 10,000 / 10,000).

    Reads ``binarized_mnist/binarized_mnist.npz`` (arrays ``train``, ``valid``, ``test``) and
    verifies the sha256 of each array. There is no canonical download source; the file must be
    present in a data directory.

    Returns:
        :class:`MNIST` with ``name="binarized-mnist"``, ``x_*`` float32 ``[n, 784]`` in
        ``{0, 1}`` and ``y_* = None`` (no labels in this data set).

    Raises:
        DataError: file missing, corrupt, or a shape/checksum mismatch.
    """
    path = _ensure_file(BINARIZED_MNIST_FILE, root, download=False)
    try:
        arrays = _load_binarized_cached(_stat_key(path))
    except DataError as err:
        searched = _searched_text(data_search_dirs(root), "binarized_mnist")
        raise DataError(f"{err} Directories searched: {searched}.") from err
    return MNIST(
        x_train=_to_unit_float(arrays["train"], 1.0),
        y_train=None,
        x_valid=_to_unit_float(arrays["valid"], 1.0),
        y_valid=None,
        x_test=_to_unit_float(arrays["test"], 1.0),
        y_test=None,
        name="binarized-mnist",
    )


# --------------------------------------------------------------------------------------------
# Omniglot
# --------------------------------------------------------------------------------------------

CHARDATA_FILE = _FileSpec(
    dataset="omniglot",
    name="chardata.mat",
    alternatives=("chardata.mat",),
    urls=("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat",),
    algo="md5",
    digest="21ecaf34373511aa7691cf2e0802aa3d",
)
"""Burda et al.'s Omniglot (``data`` 784x24345, ``testdata`` 784x8070)."""

_OMNIGLOT28_URL = (
    "https://github.com/GusRuss89/omniglot-data-preprocessor/raw/"
    "29bf9a01969ee2d10443adeb21f5a6e542867050/output/"
)


def _omniglot28_spec(name: str, sha256: str) -> _FileSpec:
    return _FileSpec(
        dataset="omniglot28",
        name=name,
        alternatives=(name,),
        urls=(_OMNIGLOT28_URL + name,),
        algo="sha256",
        digest=sha256,
    )


OMNIGLOT28_FILES: dict[str, _FileSpec] = {
    "background_png": _omniglot28_spec(
        "images_background.png", "644988456247c07d17b687db039dc73c1a45b2e59cbd51139e642d10564f96c5"
    ),
    "background_json": _omniglot28_spec(
        "images_background.json", "058f73d89719f36d1b0b011246350aeaf851db427b928dcd6c75dfd54e1d5390"
    ),
    "evaluation_png": _omniglot28_spec(
        "images_evaluation.png", "7ebb762fed8279f52742147334416635e7293782917f35d9e0bb23ac62f0c347"
    ),
    "evaluation_json": _omniglot28_spec(
        "images_evaluation.json", "1ec9c125ec6d200aad42e49e83572fd4feaa45c9dfc722d1f7a3894ec7bc5acd"
    ),
}
"""The four sprite-sheet files of ``omniglot28/`` (file sha256s)."""

OMNIGLOT28_TILE = 28
OMNIGLOT28_COLUMNS = 20
OMNIGLOT28_TEST_PER_CHAR = 5
OMNIGLOT28_SEED = 0

OmniglotVariant = Literal["burda", "lake28"]


@dataclass(frozen=True, eq=False)
class Omniglot:
    """An Omniglot data set; every instance names the variant it came from.

    Attributes:
        x_train, x_test: float32 ``[n, 784]`` grey values in ``[0, 1]``, ink bright, images
            upright and flattened row-major like MNIST.
        variant: ``"burda"`` (Burda et al.'s ``chardata.mat``, 24,345 / 8,070) or ``"lake28"``
            (all 1,623 characters x 20 drawings at 28x28, seeded 15 / 5 split per character,
            24,345 / 8,115; NOT the paper's split, results only approximately comparable).
        y_train, y_test: int64 ``[n]`` alphabet index (into ``alphabets``), or ``None``.
        alphabets: alphabet names, sorted (lake28) or empty when unknown.
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    variant: str
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    alphabets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``"omniglot-burda"`` or ``"omniglot-lake28"``."""
        return f"omniglot-{self.variant}"


def _verify_file(path: Path, spec: _FileSpec, root: str | os.PathLike[str] | None) -> None:
    got = _digest_of(path, spec)
    if got != spec.digest:
        raise _checksum_error(path, spec, got, data_search_dirs(root))


def _read_png_rgba(path: Path) -> np.ndarray:
    """uint8 ``[H, W, C]`` pixels of a PNG (PIL if installed, else matplotlib)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with matplotlib
        import matplotlib.image as mpimg

        img = mpimg.imread(path)
        if img.dtype != np.uint8:
            img = np.rint(np.asarray(img) * 255.0).astype(np.uint8)
        return np.asarray(img)
    with Image.open(path) as im:
        return np.asarray(im)


def _decode_sheet(png: Path, js: Path) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Tiles of one sprite sheet as uint8 ``[n, 784]`` (channel R) and its (id, alphabet) labels."""
    try:
        labels = [(str(c), str(a)) for c, a in json.loads(js.read_text(encoding="utf-8"))]
        img = _read_png_rgba(png)
    except (OSError, ValueError, TypeError, SyntaxError) as err:
        raise DataError(f"Cannot read {png} / {js}: truncated or corrupt ({err}).") from err
    t, cols = OMNIGLOT28_TILE, OMNIGLOT28_COLUMNS
    if img.ndim == 2:
        img = img[..., None]
    h, w = img.shape[:2]
    if w != t * cols or h % t != 0 or len(labels) > (h // t) * cols:
        raise DataError(
            f"{png}: unexpected sheet size {w}x{h} for {len(labels)} tiles of {t}x{t} "
            f"in {cols} columns."
        )
    r = img[..., 0]
    tiles = r.reshape(h // t, t, cols, t).transpose(0, 2, 1, 3).reshape(-1, t * t)
    return np.ascontiguousarray(tiles[: len(labels)]), labels


@functools.lru_cache(maxsize=2)
def _load_lake28_cached(
    keys: tuple[tuple[str, int, int], ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    bg_png, bg_js, ev_png, ev_js = (Path(k[0]) for k in keys)
    x_bg, l_bg = _decode_sheet(bg_png, bg_js)
    x_ev, l_ev = _decode_sheet(ev_png, ev_js)
    x_all = np.concatenate([x_bg, x_ev])
    labels = l_bg + l_ev
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (char_id, alphabet) in enumerate(labels):
        groups.setdefault((alphabet, char_id), []).append(i)
    alphabets = tuple(sorted({a for a, _ in groups}))
    alpha_idx = {a: i for i, a in enumerate(alphabets)}
    rng = np.random.default_rng(OMNIGLOT28_SEED)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for key in sorted(groups):
        idx = np.asarray(groups[key])
        if idx.size <= OMNIGLOT28_TEST_PER_CHAR:
            raise DataError(f"Omniglot character {key} has only {idx.size} images.")
        perm = idx[rng.permutation(idx.size)]
        train_idx.extend(perm[: idx.size - OMNIGLOT28_TEST_PER_CHAR].tolist())
        test_idx.extend(perm[idx.size - OMNIGLOT28_TEST_PER_CHAR :].tolist())
    y_all = np.asarray([alpha_idx[a] for _, a in labels], dtype=np.int64)
    # A fixed shuffle, so that the first n images of either split are a fair subset.
    tr = np.asarray(train_idx)[rng.permutation(len(train_idx))]
    te = np.asarray(test_idx)[rng.permutation(len(test_idx))]
    out = (x_all[tr], x_all[te], y_all[tr], y_all[te])
    for a in out:
        a.flags.writeable = False
    return (*out, alphabets)


_VERIFIED_LAKE28: set[tuple[tuple[str, int, int], ...]] = set()


def _load_lake28(root: str | os.PathLike[str] | None, download: bool) -> Omniglot:
    specs = [OMNIGLOT28_FILES[k] for k in ("background_png", "background_json",
                                          "evaluation_png", "evaluation_json")]
    paths = [_ensure_file(s, root, download) for s in specs]
    keys = tuple(_stat_key(p) for p in paths)
    if keys not in _VERIFIED_LAKE28:  # sha256 once per process per file version
        for p, s in zip(paths, specs, strict=True):
            _verify_file(p, s, root)
        _VERIFIED_LAKE28.add(keys)
    try:
        x_tr, x_te, y_tr, y_te, alphabets = _load_lake28_cached(keys)
    except DataError as err:
        searched = _searched_text(data_search_dirs(root), "omniglot28")
        raise DataError(f"{err} Directories searched: {searched}.") from err
    return Omniglot(
        x_train=_to_unit_float(x_tr, 255.0),
        x_test=_to_unit_float(x_te, 255.0),
        variant="lake28",
        y_train=_to_labels(y_tr),
        y_test=_to_labels(y_te),
        alphabets=alphabets,
    )


def _load_burda(root: str | os.PathLike[str] | None, download: bool) -> Omniglot:
    hint = (
        ' Burda et al.\'s chardata.mat is often unavailable; use load_omniglot(variant="lake28") '
        "for the 28x28 Omniglot built from the omniglot28/ sprite sheets "
        "(a 24,345 / 8,115 split, comparable to the paper only approximately)."
    )
    path = _ensure_file(CHARDATA_FILE, root, download, hint=hint)
    try:
        _verify_file(path, CHARDATA_FILE, root)
    except DataError as err:
        raise DataError(f"{err}{hint}") from err
    try:
        from scipy.io import loadmat

        mat = loadmat(str(path))
        data, testdata = mat["data"], mat["testdata"]
    except (OSError, ValueError, KeyError, TypeError, zlib.error) as err:
        raise DataError(f"Cannot read {path}: truncated or corrupt ({err}).{hint}") from err

    def images(cols: np.ndarray) -> torch.Tensor:
        # each column is a 28x28 image in Fortran order -> upright, flattened row-major
        n = cols.shape[1]
        imgs = np.asarray(cols, dtype=np.float32).T.reshape(n, 28, 28).transpose(0, 2, 1)
        return torch.from_numpy(np.ascontiguousarray(imgs).reshape(n, 784))

    def alphabet_labels(key: str) -> torch.Tensor | None:
        if key not in mat:
            return None
        return torch.from_numpy(np.argmax(np.asarray(mat[key]), axis=0).astype(np.int64))

    return Omniglot(
        x_train=images(data),
        x_test=images(testdata),
        variant="burda",
        y_train=alphabet_labels("target"),
        y_test=alphabet_labels("testtarget"),
    )


def load_omniglot(
    root: str | os.PathLike[str] | None = None,
    variant: OmniglotVariant = "burda",
    download: bool = True,
) -> Omniglot:
    """Load Omniglot at 28x28.

    Args:
        root: data directory searched first; see :func:`data_search_dirs`.
        variant: ``"burda"``: ``omniglot/chardata.mat`` of Burda et al. (md5-verified;
            ``data`` 784x24345 -> train, ``testdata`` 784x8070 -> test; each column reshaped
            in Fortran order to 28x28 and flattened row-major so images are upright).
            ``"lake28"``: the ``omniglot28/`` sprite sheets (sha256-verified) of all 1,623
            characters x 20 drawings; for every character, sorted by (alphabet, character id),
            a ``numpy.random.default_rng(0)`` permutation puts 15 drawings in train and 5 in
            test -> 24,345 / 8,115, in a fixed shuffled order. Grey value = channel R / 255.
        download: download missing files from their public sources.

    Returns:
        :class:`Omniglot` with ``x_train``/``x_test`` float32 ``[n, 784]`` in ``[0, 1]``,
        ``variant`` and ``name`` (e.g. ``"omniglot-lake28"``), and alphabet labels.

    Raises:
        DataError: missing file (the "burda" message suggests ``variant="lake28"``), failed
            download, checksum mismatch or corrupt file.
        ValueError: unknown ``variant``.
    """
    if variant == "burda":
        return _load_burda(root, download)
    if variant == "lake28":
        return _load_lake28(root, download)
    raise ValueError(f'variant must be "burda" or "lake28", got {variant!r}')


# --------------------------------------------------------------------------------------------
# The 1-D camel: p(x) = 0.5 N(-1, 0.5^2) + 0.5 N(1, 0.5^2)
# --------------------------------------------------------------------------------------------

CAMEL_MEANS = (-1.0, 1.0)
CAMEL_STD = 0.5


def camel_sample(
    n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Draw ``n`` samples from the camel mixture.

    Returns:
        Tensor ``[n, 1]`` (CPU, ``dtype``). Mean 0, standard deviation sqrt(1 + 0.25) ~ 1.118.
    """
    sign = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -1.0, 1.0)
    return (sign + CAMEL_STD * torch.randn(n, 1, generator=generator)).to(dtype)


def camel_log_prob(x: torch.Tensor) -> torch.Tensor:
    """Exact log-density of the camel mixture, computed in log space (logsumexp).

    Args:
        x: ``[n, 1]`` (or ``[..., 1]``) samples, or a 1-D ``[n]`` tensor of points.

    Returns:
        ``[n]`` (``[...]``) log p(x): a trailing event dimension of size 1 is summed out when
        ``x`` has 2 or more dimensions; a 1-D input gives one value per element.
    """
    if x.dim() >= 2 and x.shape[-1] == 1:
        x = x.squeeze(-1)
    means = torch.tensor(CAMEL_MEANS, dtype=x.dtype, device=x.device)
    z = (x.unsqueeze(-1) - means) / CAMEL_STD
    log_comp = -0.5 * z.pow(2) - math.log(CAMEL_STD) - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(log_comp, dim=-1) + math.log(0.5)


def _camel_log_prob_np(x: float) -> float:
    z = (np.asarray(CAMEL_MEANS) - x) / CAMEL_STD
    log_comp = -0.5 * z**2 - math.log(CAMEL_STD) - 0.5 * math.log(2 * math.pi) + math.log(0.5)
    m = float(log_comp.max())
    return m + math.log(float(np.exp(log_comp - m).sum()))


@functools.lru_cache(maxsize=1)
def camel_expected_log_prob() -> float:
    """E_p[log p(X)] of the camel, by numerical integration (scipy.integrate.quad): ~ -1.358.

    This is the best average test log-likelihood any model can reach (the KTH report's
    "true E[log p(X)] = -1.358"). It is the *negative* of :func:`camel_entropy`.
    """
    from scipy.integrate import quad

    def integrand(x: float) -> float:
        lp = _camel_log_prob_np(x)
        return math.exp(lp) * lp

    val, _ = quad(integrand, -12.0, 12.0, points=[-1.0, 0.0, 1.0], limit=200,
                  epsabs=1e-12, epsrel=1e-12)
    return float(val)


def camel_entropy() -> float:
    """Differential entropy H(p) = -E_p[log p(X)] of the camel, ~ +1.358 nats (positive)."""
    return -camel_expected_log_prob()


def camel_data(
    n_train: int, n_test: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reproducible camel train and test sets.

    Args:
        n_train, n_test: numbers of samples.
        seed: seed of a fresh ``torch.Generator``; the same seed gives the same data.

    Returns:
        ``(x_train, x_test)``, float32 ``[n_train, 1]`` and ``[n_test, 1]``.
    """
    g = torch.Generator().manual_seed(seed)
    return camel_sample(n_train, generator=g), camel_sample(n_test, generator=g)
