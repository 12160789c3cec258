"""Reading a data file: the first good copy of it in the search order (:func:`first_good`,
with a warning naming the bad copies skipped), and the arrays handed out by the loaders
(fresh float32 and int64 copies)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .files import (
    DataError,
    DataWarning,
    FileSpec,
    data_search_dirs,
    ensure_file,
    locate_all,
    searched_text,
)

__all__ = ["first_good", "to_unit_float", "to_labels"]

T = TypeVar("T")


def _stacklevel_outside_package() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the caller of this function that points at
    the first frame outside this package (the user's call of a loader)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)  # the function that warns: level 1
    level = 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame = frame.f_back
        level += 1
    return level


def first_good(
    spec: FileSpec,
    root: str | os.PathLike[str] | None,
    download: bool,
    load: Callable[[Path], T],
    hint: str = "",
) -> T:
    """``load(path)`` of the first copy of ``spec``, in search order, that loads.

    ``load`` reads, verifies and parses one copy, raising :class:`DataError` if it is bad. A
    bad copy is skipped when a later search directory has a good one; then one
    :class:`DataWarning` names the copies skipped. With no copy anywhere the file is
    downloaded (when ``download`` and it has a source). When every copy is bad, the error of
    the first is raised, with the directories searched (and ``hint``) appended.
    """
    searched = data_search_dirs(root)
    candidates = locate_all(spec, root)
    if not candidates:
        candidates = [ensure_file(spec, root, download, hint)]
    failures: list[tuple[Path, DataError]] = []
    for path in candidates:
        try:
            value = load(path)
        except DataError as err:
            failures.append((path, err))
            continue
        if failures:
            bad = ", ".join(str(p) for p, _ in failures)
            why = " ".join(str(e) for _, e in failures)
            warnings.warn(
                f"Skipped the bad copy {bad} and used {path} instead (delete or replace the "
                f"bad copy to silence this warning). Why it is bad: {why}",
                DataWarning,
                stacklevel=_stacklevel_outside_package(),
            )
        return value
    first_err = failures[0][1]
    others = ""
    if len(failures) > 1:
        others = " The other copies are bad too: " + ", ".join(str(p) for p, _ in failures[1:])
        others += "."
    raise DataError(
        f"{first_err}{others} Directories searched: "
        f"{searched_text(searched, spec.dataset)}.{hint}"
    ) from first_err


# --------------------------------------------------------------------------------------------
# Handing out arrays (shared by the loaders)
# --------------------------------------------------------------------------------------------


def to_unit_float(arr: np.ndarray, scale: float) -> torch.Tensor:
    """float32 ``[n, prod(rest)]`` copy of ``arr`` divided by ``scale`` (always a fresh copy)."""
    x = np.array(arr.reshape(arr.shape[0], -1), dtype=np.float32)
    t = torch.from_numpy(x)
    if scale != 1.0:
        t.div_(scale)
    return t


def to_labels(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.int64))  # a fresh, writable copy
