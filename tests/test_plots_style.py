"""Every colour of the figures comes from one module, ``iwae_tutorial.plots.style``: no other
plotting module, and no chapter's code, writes a colour of its own, so that a model kind
(VAE, IWAE, the truth, ...) looks the same in every figure."""

import ast
import json
import re
from pathlib import Path

import pytest
from matplotlib.colors import is_color_like

from iwae_tutorial.plots import style

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "src" / "iwae_tutorial" / "plots"
MODULES = sorted(p for p in PLOTS.glob("*.py") if p.name != "style.py")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

HEX = re.compile(r"#(?:[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})\b")
#: keyword arguments that take a colour
COLOR_KEYWORDS = {"color", "colors", "c", "facecolor", "facecolors", "edgecolor", "edgecolors",
                  "fc", "ec", "mfc", "mec", "markerfacecolor", "markeredgecolor", "q_color"}
#: colour-like strings that are not colours of a curve ("none": a hollow marker)
ALLOWED = {"none"}


def _not_values(tree: ast.AST) -> set[int]:
    """ids of the string constants that cannot be a colour: docstrings (of the module, its
    classes and functions), dictionary keys and subscripts (``c["k"]``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
        elif isinstance(node, ast.Dict):
            out.update(id(k) for k in node.keys if k is not None)
        elif isinstance(node, ast.Subscript):
            out.add(id(node.slice))
    return out


def module_colors(source: str) -> list[tuple[int, str]]:
    """(line, literal) of every string constant of ``source`` that names a colour: a hex
    colour anywhere in it, or a whole string matplotlib reads as a colour ("C0", "tab:red",
    "black", "0.85", "k", ...). Docstrings, dictionary keys and subscripts are skipped."""
    tree = ast.parse(source)
    skip = _not_values(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in skip:
            continue
        s = node.value
        if HEX.search(s) or (s.strip() and s not in ALLOWED and is_color_like(s)):
            found.append((node.lineno, s))
    return found


def _is_color_literal(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value not in ALLOWED and (bool(HEX.search(node.value))
                                               or is_color_like(node.value)))


def code_colors(source: str) -> list[tuple[int, str]]:
    """(line, literal) of the colour literals a chapter's code passes as colours: a string
    colour given to a colour keyword (``color="C3"``, ``dict(color="black")``) or as the value
    of a ``"color"`` key, and any hex colour or colour-cycle reference ("C0", "tab:blue")."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in COLOR_KEYWORDS:
            values = node.value.elts if isinstance(node.value, (ast.Tuple, ast.List)) else [
                node.value]
            found += [(v.lineno, v.value) for v in values if _is_color_literal(v)]
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if (isinstance(k, ast.Constant) and k.value in COLOR_KEYWORDS
                        and _is_color_literal(v)):
                    found.append((v.lineno, v.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if HEX.search(node.value) or re.fullmatch(r"C\d|tab:\w+|xkcd:.+", node.value):
                found.append((node.lineno, node.value))
    return sorted(set(found))


def notebook_code(path: Path) -> str:
    """The code cells of a chapter as one Python source (IPython magics replaced by ``pass``)."""
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    lines = [(ln[: len(ln) - len(ln.lstrip())] + "pass  # " + ln.lstrip())
             if ln.lstrip().startswith(("%", "!")) else ln
             for cell in cells for ln in (cell.splitlines() + [""])]
    return "\n".join(lines)


def test_the_scan_finds_the_old_colours():
    """The scans catch the ways the plots used to write colours (table.py drew the IWAE red,
    the others blue)."""
    old_table = '''
_STYLE = {("vae", 1): ("tab:blue", "o"), ("iwae", 1): ("tab:red", "o"),
          ("vae", 2): ("tab:blue", "s"), ("iwae", 2): ("tab:red", "s")}
'''
    assert [s for _, s in module_colors(old_table)] == ["tab:blue", "tab:red"] * 2
    assert module_colors('IWAE_COLOR = "C0"\nMODEL_COLORS = {"VAE": "#ff7f0e"}') == [
        (1, "C0"), (2, "#ff7f0e")]
    assert module_colors('ax.axvline(0, color="k")\nax.hist(v, color="0.85")') == [
        (1, "k"), (2, "0.85")]
    assert module_colors('alpha = {1: 0.3}.get(int(c["k"]))\nd = {"r": 1}') == []
    # not colours: markers, line styles, labels, colour-map names, a hollow marker, docstrings
    assert module_colors('"""In blue."""\nax.plot(x, marker="o", ls="--", label="IWAE", '
                         'mfc="none")\nplt.get_cmap("viridis")') == []
    chapter = ('styles={"p": dict(color="black", lw=2)}\nax.plot(x, color="C3")\n'
               'c = "tab:red"\nax.hist(v, color=lplots.IWAE_COLOR)\nd = {"color": "red"}')
    assert code_colors(chapter) == [(1, "black"), (2, "C3"), (3, "tab:red"), (5, "red")]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_plot_modules_take_their_colours_from_style(path):
    found = module_colors(path.read_text())
    assert not found, (f"plots/{path.name} writes colours of its own (line, literal): {found}; "
                       "use (or add) a colour of iwae_tutorial.plots.style")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapters_take_their_colours_from_style(path):
    found = code_colors(notebook_code(path))
    assert not found, (f"{path.name} passes colour literals (line of its code cells, literal): "
                       f"{found}; use iwae_tutorial.plots.style")


def test_one_colour_per_model_kind():
    assert style.MODEL_COLORS == {"VAE": style.VAE, "IWAE": style.IWAE, "STL": style.STL,
                                  "DREG": style.DREG, "MIWAE": style.MIWAE,
                                  "CIWAE": style.CIWAE, "PIWAE": style.PIWAE,
                                  "IWAER": style.IWAER, "IWAERREC": style.IWAER_REC,
                                  "RWS": style.RWS}
    kinds = [style.VAE, style.IWAE, style.TRUTH, style.TRUTH_FILL, style.POOR_Q, style.GOOD_Q,
             style.OTHER, style.CHECK, style.STL, style.DREG, style.MIWAE, style.CIWAE,
             style.PIWAE, style.IWAER, style.IWAER_REC, style.RWS]
    assert all(is_color_like(c) for c in kinds)
    assert len(set(kinds)) == len(kinds), "two kinds of curve share a colour"
    assert style.model_color("IWAE k=50") == style.model_color("iwae") == style.IWAE
    assert style.model_color("VAE, 2 layers") == style.model_color("vae") == style.VAE
    assert style.model_color("DReG k=50") == style.model_color("dreg") == style.DREG
    assert style.model_color("MIWAE(5, 10)") == style.MIWAE
    assert style.model_color("IWAERrec") == style.IWAER_REC
    assert style.model_color("wake-sleep") is None
    assert style.model_color("wake-sleep", "x") == "x"


def test_the_plot_modules_use_style():
    for path in MODULES:
        if path.name in ("__init__.py", "_util.py"):
            continue
        assert "from . import style" in path.read_text(), path.name


def _line_colors(ax) -> dict[str, object]:
    return {ln.get_label(): ln.get_color() for ln in ax.get_lines()}


def test_figures_draw_each_model_kind_in_its_colour():
    """What the figures actually draw: the same colour for a kind in every module."""
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.colors import same_color

    from iwae_tutorial.plots import bounds, camel, table
    from iwae_tutorial.results import KS, ROWS

    x = torch.linspace(-2, 2, 21).view(-1, 1)
    lp = -0.5 * x.view(-1) ** 2
    ax = camel.plot_learned_densities(x, lp, {"VAE": [lp], "IWAE": [lp - 0.1]})
    c = _line_colors(ax)
    assert same_color(c["VAE"], style.VAE) and same_color(c["IWAE"], style.IWAE)
    assert same_color(c["true p(x)"], style.TRUTH)

    est = {k: {"iwae": torch.randn(20) - 1, "elbo": torch.randn(20) - 2} for k in (1, 10)}
    ax = bounds.plot_bound_vs_k(est, 0.0, exact_elbo=-2.0)
    c = _line_colors(ax)
    assert same_color(c["exact ELBO"], style.VAE) and same_color(c[r"exact $\log p(x)$"],
                                                                 style.TRUTH)

    result = {"dataset": "mnist", "budget": "test", "configurations": [
        {"objective": obj, "stochastic_layers": layers, "k": k, "nll": 90.0 - k / 100,
         "paper": {"nll": 86.0}, "name": f"{obj}-{layers}L-k{k}",
         "train_bound_per_epoch": [-100.0, -95.0]}
        for obj, layers in ROWS for k in KS]}
    c = _line_colors(table.plot_nll_vs_k(result).axes[0])
    for layers in (1, 2):
        name = f"{layers} layer{'s' if layers > 1 else ''}"
        assert same_color(c[f"IWAE, {name}"], style.IWAE), c
        assert same_color(c[f"VAE, {name}"], style.VAE), c
    c = _line_colors(table.plot_learning_curves(result).axes[0])
    assert all(same_color(col, style.model_color(name)) for name, col in c.items()), c
    ax = table.plot_unit_variances({"VAE k=50": [torch.rand(50)],
                                    "IWAE k=50": [torch.rand(50)]}).axes[0]
    edges = {p.get_label(): p.get_edgecolor() for p in ax.patches}
    assert same_color(edges["VAE k=50"], style.VAE) and same_color(edges["IWAE k=50"],
                                                                   style.IWAE)
    plt.close("all")
