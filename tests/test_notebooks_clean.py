"""The chapters are stored without outputs, open on Colab, are all in the table of contents, show
no raw ``{glue}`` roles (Colab cannot fill them in), and fold their hidden cells in Colab."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            for part in e.get("parts", []) or []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return files


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs"), f"{path.name} cell {i} has stored outputs: clear them"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_installs_the_package_on_colab(path):
    nb = json.loads(path.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    src = "".join(first["source"])
    assert "import iwae_tutorial" in src and "pip install" in src, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_in_the_table_of_contents(path):
    listed = {f.rsplit(".", 1)[0] for f in toc_files()}
    assert f"notebooks/{path.stem}" in listed, f"{path.name} is missing from _toc.yml"


HIDDEN_TAGS = {"remove-cell", "remove-input", "hide-input", "hide-cell"}


def glue_roles(nb: dict) -> list[str]:
    """The ``{glue...}`` roles in a notebook's Markdown: Colab, Jupyter and GitHub show them
    raw, so a number in prose must be the Markdown output of a code cell instead."""
    return [m for cell in nb["cells"] if cell["cell_type"] == "markdown"
            for m in re.findall(r"\{glue[^}]*\}`[^`]*`", "".join(cell["source"]))]


def unfolded_hidden_cells(nb: dict) -> list[int]:
    """Indices of hidden cells (removed or folded on the site) that Colab would show open:
    those that neither start with a ``# @title`` form line nor are one short line."""
    bad = []
    for i, cell in enumerate(nb["cells"]):
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] != "code" or not tags & HIDDEN_TAGS:
            continue
        lines = "".join(cell["source"]).strip().splitlines()
        if not lines or not (lines[0].startswith("# @title") or len(lines) == 1):
            bad.append(i)
    return bad


def unfolded_title_cells(nb: dict) -> list[int]:
    """Indices of ``# @title`` cells without Colab's ``cellView: form`` (which folds the code
    under its title when the notebook opens)."""
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and "".join(c["source"]).lstrip().startswith("# @title")
            and c.get("metadata", {}).get("cellView") != "form"]


def test_the_scans_find_roles_and_open_hidden_cells():
    nb = {"cells": [
        {"cell_type": "markdown", "source": ["Some {glue:text}`ch1_a:.2f` nats"]},
        {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": ["x = 1\n", "y"]},
        {"cell_type": "code", "metadata": {"tags": ["remove-input"]},
         "source": ["# @title The result\n", "prose('x')"]},
        {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": ["check()"]},
    ]}
    assert glue_roles(nb) == ["{glue:text}`ch1_a:.2f`"]
    assert unfolded_hidden_cells(nb) == [1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_glue_role_in_the_prose(path):
    roles = glue_roles(json.loads(path.read_text()))
    assert not roles, f"{path.name}: numbers in prose must come from a prose() cell: {roles[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_hidden_cells_are_folded_in_colab(path):
    nb = json.loads(path.read_text())
    bad = unfolded_hidden_cells(nb)
    assert not bad, f"{path.name}: hidden cells {bad} must start with '# @title ...'"
    open_forms = unfolded_title_cells(nb)
    assert not open_forms, f"{path.name}: '# @title' cells {open_forms} need cellView: form"


def test_every_chapter_starts_with_the_one_install_cell():
    """The install cell has one source (notebook.install_cell; scripts/sync_install_cell.py
    writes it), and its repository is the book's."""
    import json

    from iwae_tutorial.notebook import REPOSITORY, install_cell

    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert "".join(first["source"]) == install_cell(), (
            f"{path.name}: run python scripts/sync_install_cell.py")
    assert f"url: {REPOSITORY}" in (ROOT / "_config.yml").read_text()


FILE_REF = re.compile(r"`([\w./<>*{}-]+\.(?:json|py|ipynb|md|sh|yml))`")


def mentioned_files(text: str) -> list[str]:
    """File names a text mentions in backticks (placeholders such as ``<budget>`` skipped)."""
    return [f for f in FILE_REF.findall(text) if not any(c in f for c in "<>*{}")]


def test_the_file_scan_reads_names():
    assert mentioned_files("see `results/x.json`, `scripts/a.py` and `mnist-<b>.json`") == [
        "results/x.json", "scripts/a.py"]


@pytest.mark.parametrize("path", [*NOTEBOOKS, ROOT / "book" / "intro.md",
                                  ROOT / "book" / "instructors.md"], ids=lambda p: p.name)
def test_every_file_a_page_mentions_exists(path):
    """A chapter never points the reader to a file that is not there: a path is resolved from
    the repository's root, a bare result-file name in ``results/``, a bare script name in
    ``scripts/``."""
    text = path.read_text()
    if path.suffix == ".ipynb":
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
    missing = []
    for name in mentioned_files(text):
        here = [ROOT / name] if "/" in name else [
            ROOT / "results" / name, ROOT / "scripts" / name, ROOT / "notebooks" / name,
            ROOT / "book" / name, ROOT / "src" / "iwae_tutorial" / "trained" / name, ROOT / name]
        if not any(p.exists() for p in here):
            missing.append(name)
    assert not missing, f"{path.name} mentions files that do not exist: {missing}"
