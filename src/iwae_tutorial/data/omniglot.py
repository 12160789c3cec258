"""Omniglot at 28x28, in two variants: Burda et al.'s ``chardata.mat`` ("burda") and the
sprite sheets of all 1,623 characters x 20 drawings with a seeded 15 / 5 split ("lake28")."""

from __future__ import annotations

import functools
import io
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .files import (
    DataError,
    FileSpec,
    data_search_dirs,
    read_bytes,
    searched_text,
    stat_key,
    verify_file,
)
from .reading import first_good, to_labels, to_unit_float

CHARDATA_FILE = FileSpec(
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


def _omniglot28_spec(name: str, sha256: str) -> FileSpec:
    return FileSpec(
        dataset="omniglot28",
        name=name,
        alternatives=(name,),
        urls=(_OMNIGLOT28_URL + name,),
        algo="sha256",
        digest=sha256,
    )


OMNIGLOT28_FILES: dict[str, FileSpec] = {
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


def _read_png_rgba(raw: bytes) -> np.ndarray:
    """uint8 ``[H, W, C]`` pixels of a PNG's bytes (PIL if installed, else matplotlib)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with matplotlib
        import matplotlib.image as mpimg

        img = mpimg.imread(io.BytesIO(raw), format="png")
        if img.dtype != np.uint8:
            img = np.rint(np.asarray(img) * 255.0).astype(np.uint8)
        return np.asarray(img)
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im)


def _decode_sheet(png: Path, js: Path) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Tiles of one sprite sheet as uint8 ``[n, 784]`` (channel R) and its (id, alphabet) labels."""
    js_raw, png_raw = read_bytes(js), read_bytes(png)
    try:
        labels = [(str(c), str(a)) for c, a in json.loads(js_raw.decode("utf-8"))]
        img = _read_png_rgba(png_raw)
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


def _verified(spec: FileSpec):
    """``load`` for :func:`first_good`: verify the copy's checksum, return its path."""

    def load(path: Path) -> Path:
        verify_file(path, spec)
        return path

    return load


def _load_lake28(root: str | os.PathLike[str] | None, download: bool) -> Omniglot:
    specs = [OMNIGLOT28_FILES[k] for k in ("background_png", "background_json",
                                          "evaluation_png", "evaluation_json")]
    # sha256 of each file once per process per file version; a bad copy is skipped
    paths = [first_good(s, root, download, _verified(s)) for s in specs]
    keys = tuple(stat_key(p) for p in paths)
    try:
        x_tr, x_te, y_tr, y_te, alphabets = _load_lake28_cached(keys)
    except DataError as err:
        searched = searched_text(data_search_dirs(root), "omniglot28")
        raise DataError(f"{err} Directories searched: {searched}.") from err
    return Omniglot(
        x_train=to_unit_float(x_tr, 255.0),
        x_test=to_unit_float(x_te, 255.0),
        variant="lake28",
        y_train=to_labels(y_tr),
        y_test=to_labels(y_te),
        alphabets=alphabets,
    )


_BURDA_HINT = (
    " Burda et al.'s chardata.mat is often unavailable; use the 28x28 Omniglot built from the "
    "omniglot28/ sprite sheets instead (--dataset omniglot-lake28 for train and reproduce, "
    'load_omniglot(variant="lake28") in Python): '
    "a 24,345 / 8,115 split, comparable to the paper only approximately."
)


def _read_chardata(path: Path) -> dict:
    """Verify ``chardata.mat`` and read it (``scipy.io.loadmat``), or raise DataError."""
    verify_file(path, CHARDATA_FILE)
    raw = read_bytes(path)
    try:
        from scipy.io import loadmat

        mat = loadmat(io.BytesIO(raw))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error) as err:
        raise DataError(f"Cannot read {path}: truncated or corrupt ({err}).") from err
    missing = [k for k in ("data", "testdata") if k not in mat]
    if missing:
        raise DataError(f"{path} has no variable {' or '.join(missing)}: not Burda's file.")
    return mat


def _load_burda(root: str | os.PathLike[str] | None, download: bool) -> Omniglot:
    mat = first_good(CHARDATA_FILE, root, download, _read_chardata, hint=_BURDA_HINT)
    data, testdata = mat["data"], mat["testdata"]

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
            download, checksum mismatch, corrupt or unreadable file.
        ValueError: unknown ``variant``.
    """
    if variant == "burda":
        return _load_burda(root, download)
    if variant == "lake28":
        return _load_lake28(root, download)
    raise ValueError(f'variant must be "burda" or "lake28", got {variant!r}')
