"""The chapters are stored without outputs, open on Colab, are all in the table of contents, and
glue their numbers under keys named after their own chapter."""

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


GLUE_CALL = re.compile(r"""\bglue\(\s*(f?)(["'])(.*?)\2""")
GLUE_REF = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")


def glued_keys(nb: dict) -> list[re.Pattern]:
    """The keys a chapter's code glues, as patterns (an f-string's fields match any text)."""
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for f, _, key in GLUE_CALL.findall("".join(cell["source"])):
            parts = re.split(r"\{[^{}]*\}", key) if f else [key]
            out.append(re.compile(".+".join(re.escape(part) for part in parts)))
    return out


def referenced_keys(nb: dict) -> set[str]:
    """The keys a chapter's text shows with ``{glue:text}`` (or ``{glue}``)."""
    return {key for cell in nb["cells"] if cell["cell_type"] == "markdown"
            for key in GLUE_REF.findall("".join(cell["source"]))}


def test_the_glue_scan_reads_keys():
    nb = {"cells": [
        {"cell_type": "code", "source": ['glue("ch1_a", 1)\n', 'glue(f"ch1_{n}_b", 2)']},
        {"cell_type": "markdown", "source": ["{glue:text}`ch1_a:.2f` and {glue:text}`ch1_x_b`"]},
    ]}
    assert [p.pattern for p in glued_keys(nb)] == ["ch1_a", "ch1_.+_b"]
    assert referenced_keys(nb) == {"ch1_a", "ch1_x_b"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_glue_keys_carry_the_chapter_number(path):
    """``NN_name.ipynb`` glues ``chN_*`` keys only, and its text refers to no other key."""
    nb = json.loads(path.read_text())
    prefix = f"ch{int(path.name[:2])}_"
    glued = glued_keys(nb)
    bad = [p.pattern for p in glued if not p.pattern.startswith(re.escape(prefix))]
    assert not bad, f"{path.name} glues keys without the prefix {prefix}: {bad}"
    refs = referenced_keys(nb)
    assert all(k.startswith(prefix) for k in refs), sorted(k for k in refs
                                                           if not k.startswith(prefix))
    missing = sorted(k for k in refs if not any(p.fullmatch(k) for p in glued))
    assert not missing, f"{path.name} shows keys it never glues: {missing}"


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
