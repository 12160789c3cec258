"""Every chapter's cells run twice in one kernel (smoke profile): a reader who runs a cell
again, or the whole notebook again, gets no error from a name a cell rebinds (say
``verbose=live()`` followed by ``live = ...``) or from state an earlier run left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smoke_chapter_env

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_cell_runs_twice_in_one_kernel(chapter, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    smoke_chapter_env(monkeypatch)
    nb = nbformat.read(chapter, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(chapter.parent)}})
    with client.setup_kernel():
        for run in (1, 2):  # the whole chapter, then the whole chapter again
            for i, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    try:
                        client.execute_cell(cell, i)
                    except nbclient.exceptions.CellExecutionError as e:
                        pytest.fail(f"{chapter.name}, run {run}, cell {i}: "
                                    f"{str(e).strip().splitlines()[-1][:300]}")
