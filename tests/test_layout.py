"""The package's layout: every import points down (no cycle, function-level imports included),
no module over 500 lines, no importlib indirection between the package's modules, and no
module using another module's private names.

Run on its own as a report: ``python tests/test_layout.py`` prints the import graph.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import iwae_tutorial

PKG_DIR = Path(iwae_tutorial.__file__).parent
PKG = PKG_DIR.name
ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = [PKG, *path.relative_to(PKG_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: package modules it imports anywhere in its source (module or function level)}"""
    files = sorted(PKG_DIR.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        mod = module_name(f)
        package = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names = [f"{stem}.{a.name}" for a in node.names] + [stem]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                while name and name not in modules and "." in name:
                    name = name.rsplit(".", 1)[0]
                if name in modules and name != mod:
                    targets.add(name)
                    break  # the most specific module this import names
        graph[mod] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(PKG_DIR)): n for p in PKG_DIR.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_importlib_between_package_modules():
    users = [str(p.relative_to(PKG_DIR)) for p in PKG_DIR.rglob("*.py")
             if "importlib" in p.read_text() and "import_module" in p.read_text()]
    assert not users, users


if __name__ == "__main__":  # the graph, bottom-up
    g = import_graph()
    for m in sorted(g, key=lambda m: (len(g[m]), m)):
        below = ", ".join(sorted(t[len(PKG) + 1:] or PKG for t in g[m]))
        print(f"{m[len(PKG) + 1:] or PKG:22s} -> {below}")
    print("cycle:", find_cycle(g))


def test_the_device_path_imports_without_the_optional_packages():
    """The GPU machine has torch and numpy but not platformdirs, tqdm, scipy, matplotlib,
    ipywidgets or jupyter-book: the job's modules must import and run without them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('platformdirs', 'tqdm', 'scipy', 'matplotlib', 'ipywidgets',\n"
        "             'jupyter_book', 'PIL', 'IPython'):\n"
        "    sys.modules[name] = None  # as if not installed: import fails, find_spec is None\n"
        "import torch\n"
        "from iwae_tutorial import cli, reproduce, runs  # noqa\n"
        "from iwae_tutorial.fleet import fast, noise, stacked  # noqa\n"
        "from iwae_tutorial.fleet import Fleet, FleetMember\n"
        "from iwae_tutorial.models import IWAE\n"
        "from iwae_tutorial.data import data_search_dirs\n"
        "data_search_dirs()\n"
        "torch.manual_seed(0)\n"
        "f = Fleet([IWAE(20, [(8, 2)])], [FleetMember('iwae', 3, 0, 'a')])\n"
        "fast.fit_fast(f, torch.rand(40, 20), epochs=1, batch_size=20, progress=False)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_requirements_txt_is_generated_from_pyproject():
    """One list of dependencies: requirements.txt is written from pyproject.toml."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_requirements.py"),
                        "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


#: private names of other libraries that the package may use
FOREIGN_PRIVATE = {"_asdict", "_getframe", "_replace", "_fields", "_linear_pointwise"}


def private_uses() -> list[str]:
    """Where a module imports a private name from the package, or reaches a private attribute
    of anything but ``self``/``cls`` (another module's class or module)."""
    found = []
    for f in sorted(PKG_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                     .startswith(PKG)):
                found += [f"{f.relative_to(PKG_DIR)}:{node.lineno} imports {a.name}"
                          for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                  and not node.attr.startswith("__") and node.attr not in FOREIGN_PRIVATE
                  and not (isinstance(node.value, ast.Name)
                           and node.value.id in ("self", "cls"))):
                found.append(f"{f.relative_to(PKG_DIR)}:{node.lineno} uses "
                             f"{ast.unparse(node)}")
    return found


def test_no_module_uses_another_modules_private_names():
    assert private_uses() == []


def test_the_private_name_check_finds_one(tmp_path, monkeypatch):
    import sys

    fake = tmp_path / PKG
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from .b import _helper\n\ndef f(m):\n    return m._secret\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG_DIR", fake)
    assert [u.split(" ", 1)[1] for u in private_uses()] == ["imports _helper",
                                                            "uses m._secret"]


#: subpackage -> its modules that the rest of the package may import besides its __init__
PUBLIC_MODULES = {"fleet": {"stacked"}, "runs": set()}


def subpackage_reaches() -> list[str]:
    """Where a module outside a subpackage of :data:`PUBLIC_MODULES` imports one of its inner
    modules (anything but the subpackage itself and the modules listed as public)."""
    found = []
    graph = import_graph()
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            parts = t.split(".")
            if len(parts) < 3 or parts[1] not in PUBLIC_MODULES:
                continue
            sub = f"{PKG}.{parts[1]}"
            if mod == sub or mod.startswith(sub + "."):
                continue  # the subpackage's own modules
            if parts[2] not in PUBLIC_MODULES[parts[1]]:
                found.append(f"{mod} imports {t}")
    return found


def test_subpackages_are_used_through_their_public_interface():
    """fleet/ and runs/ are used through their __init__ (and fleet.stacked, the kernels that
    evaluation shares): their other modules are their own."""
    assert subpackage_reaches() == []


def test_the_subpackage_check_finds_one(monkeypatch):
    import sys

    graph = {f"{PKG}.cli": {f"{PKG}.runs.store", f"{PKG}.fleet.stacked", f"{PKG}.fleet"},
             f"{PKG}.runs": {f"{PKG}.runs.store"}}
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: graph)
    assert subpackage_reaches() == [f"{PKG}.cli imports {PKG}.runs.store"]


def test_the_package_map_names_every_module():
    """src/iwae_tutorial/README.md lists every module (a new one goes on the map)."""
    text = (PKG_DIR / "README.md").read_text()
    named = set(re.findall(r"`([a-z_/]+(?:\.py|/))`", text))
    missing = []
    for p in sorted(PKG_DIR.rglob("*.py")):
        rel = str(p.relative_to(PKG_DIR))
        if rel.startswith("plots/") and "plots/" in named:
            continue
        if rel.startswith("facts/") and "facts/" in named:
            continue
        if rel not in named:
            missing.append(rel)
    assert not missing, missing


def test_no_package_module_is_ignored_by_git():
    """A module that .gitignore hides works here and is missing from every clone."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard",
                          "--", str(PKG_DIR.relative_to(ROOT))], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert [f for f in out if f.endswith((".py", ".md"))] == []
