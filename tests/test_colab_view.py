"""The chapters as Colab shows them: executed by nbclient, outside Jupyter Book, the paragraphs
whose numbers come from code are Markdown outputs holding the numbers (no ``{glue}`` role for
Colab to show raw)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import smoke_chapter_env

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "05_density_estimation.ipynb"


@pytest.mark.slow
def test_generated_paragraphs_hold_numbers_outside_jupyter_book(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    smoke_chapter_env(monkeypatch)
    nb = nbformat.read(CHAPTER, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(CHAPTER.parent)}}).execute()
    paragraphs = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code"
                  for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert len(paragraphs) >= 4, paragraphs
    for text in paragraphs:
        assert "{glue" not in text, text[:200]
        assert re.search(r"\d+\.\d", text), f"a paragraph without a number: {text[:200]}"
    hidden = [c for c in nb.cells if c.cell_type == "code"
              and "remove-input" in c.metadata.get("tags", [])]
    assert hidden and all(c.source.startswith("# @title") for c in hidden)
