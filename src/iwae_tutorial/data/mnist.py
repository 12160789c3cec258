"""MNIST: IDX files, the grey-value loader with Burda et al.'s split, dynamic binarization, and
Larochelle & Murray's fixed-binarization MNIST."""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import (
    DATA_DIR_FIX,
    DataError,
    FileSpec,
    data_search_dirs,
    good_copy_text,
    maybe_gunzip,
    read_bytes,
    searched_text,
    stat_key,
)
from .reading import first_good, to_labels, to_unit_float

MNIST_N_VALID = 400
"""The last 400 of the 60,000 MNIST training images are the validation set (Burda et al.)."""
MNIST_N_TRAIN = 60_000 - MNIST_N_VALID
"""The training images of that split: 59,600."""


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
    fix = (
        f"Delete {path} and load again to download it anew, or "
        f"{good_copy_text(Path(path).name)}."
    )
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
        DataError: unreadable file, bad magic number, truncated/corrupt file or gzip stream,
            or MD5 mismatch.
    """
    p = Path(path)
    raw = maybe_gunzip(read_bytes(p), p)
    if expected_md5 is not None:
        got = hashlib.md5(raw).hexdigest()
        if got != expected_md5:
            raise DataError(
                f"Checksum mismatch for {p}: md5 of the uncompressed bytes is {got}, expected "
                f"{expected_md5}. The file is corrupt or a different version; delete it and "
                f"download it again, or {good_copy_text(p.name)}."
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


def _mnist_spec(stem: str, md5: str) -> FileSpec:
    return FileSpec(
        dataset="mnist",
        name=stem + ".gz",
        alternatives=(stem + ".gz", stem),
        urls=tuple(base + stem + ".gz" for base in _MNIST_URLS),
        algo="md5",
        digest=md5,
        of_uncompressed=True,
    )


MNIST_FILES: dict[str, FileSpec] = {
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
    return first_good(
        spec, root, download, lambda path: _read_idx_cached(stat_key(path), spec.digest)
    )


def load_mnist(root: str | os.PathLike[str] | None = None, download: bool = True) -> MNIST:
    """Load MNIST grey values with the split of Burda et al.

    The 60,000 training images are split into train = the first 59,600 and valid = the last
    400; test = the 10,000 test images. The MD5s of the uncompressed IDX files are verified
    (once per process per file version; results are cached on (path, mtime, size)). A bad
    copy of a file in an earlier data directory is skipped, with a warning, when a later one
    holds a good copy.

    Args:
        root: data directory searched first (it holds ``mnist/``); see :func:`data_search_dirs`.
        download: download missing files from the public mirrors.

    Returns:
        :class:`MNIST` with ``x_*`` float32 ``[n, 784]`` in ``[0, 1]`` and ``y_*`` int64 ``[n]``
        (n = 59,600 / 400 / 10,000). The tensors are fresh copies, safe to modify.

    Raises:
        DataError: missing file (and no download), failed download, checksum mismatch,
            truncated, corrupt or unreadable file.
    """
    xtr = _mnist_array("train_images", root, download)
    ytr = _mnist_array("train_labels", root, download)
    xte = _mnist_array("test_images", root, download)
    yte = _mnist_array("test_labels", root, download)
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise DataError(
            f"MNIST images and labels disagree in count ({xtr.shape[0]} vs {ytr.shape[0]}, "
            f"{xte.shape[0]} vs {yte.shape[0]}). Check the files in "
            f"{searched_text(data_search_dirs(root), 'mnist')}."
        )
    if xtr.shape[0] <= MNIST_N_VALID:
        raise DataError(f"MNIST training set too small ({xtr.shape[0]} images).")
    n_tr = xtr.shape[0] - MNIST_N_VALID
    x_all = to_unit_float(xtr, 255.0)
    y_all = to_labels(ytr)
    return MNIST(
        x_train=x_all[:n_tr],
        y_train=y_all[:n_tr],
        x_valid=x_all[n_tr:],
        y_valid=y_all[n_tr:],
        x_test=to_unit_float(xte, 255.0),
        y_test=to_labels(yte),
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

BINARIZED_MNIST_FILE = FileSpec(
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

_NPZ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, KeyError, EOFError, TypeError, AttributeError, NotImplementedError,
    zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile, pickle.UnpicklingError,
)
"""What ``np.load`` of a truncated, CRC-corrupt or foreign file raises (zip, zlib, npy-header
and pickle errors): each becomes one :class:`DataError`."""


def _binarized_fix(path: str) -> str:
    shapes = ", ".join(f"{k} [{s[0]}, {s[1]}]" for k, (s, _) in BINARIZED_MNIST_ARRAYS.items())
    return (
        f"Replace {path} with a good copy (a numpy .npz file holding the uint8 arrays {shapes} "
        f"with values 0/1), or {DATA_DIR_FIX}, a folder DIR holding "
        f"binarized_mnist/binarized_mnist.npz."
    )


@functools.lru_cache(maxsize=2)
def _load_binarized_cached(key: tuple[str, int, int]) -> dict[str, np.ndarray]:
    path = key[0]
    fix = _binarized_fix(path)
    raw = read_bytes(Path(path))
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            missing = [k for k in BINARIZED_MNIST_ARRAYS if k not in z.files]
            if missing:
                raise DataError(
                    f"{path} has no array {', '.join(map(repr, missing))} (it has "
                    f"{', '.join(map(repr, z.files)) or 'none'}). {fix}"
                )
            arrays = {k: np.asarray(z[k]) for k in BINARIZED_MNIST_ARRAYS}
    except DataError:
        raise
    except _NPZ_ERRORS as err:
        raise DataError(
            f"Cannot read {path}: truncated or corrupt npz ({type(err).__name__}: {err}). {fix}"
        ) from err
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
    present in a data directory. A bad copy in an earlier data directory is skipped, with a
    warning, when a later one holds a good copy.

    Returns:
        :class:`MNIST` with ``name="binarized-mnist"``, ``x_*`` float32 ``[n, 784]`` in
        ``{0, 1}`` and ``y_* = None`` (no labels in this data set).

    Raises:
        DataError: file missing, unreadable, truncated or corrupt, or a shape/checksum
            mismatch.
    """
    arrays = first_good(
        BINARIZED_MNIST_FILE, root, False, lambda path: _load_binarized_cached(stat_key(path))
    )
    return MNIST(
        x_train=to_unit_float(arrays["train"], 1.0),
        y_train=None,
        x_valid=to_unit_float(arrays["valid"], 1.0),
        y_valid=None,
        x_test=to_unit_float(arrays["test"], 1.0),
        y_test=None,
        name="binarized-mnist",
    )
