"""A chapter as Colab runs it: the package built as a wheel and installed (not editable) into a
new virtual environment, one chapter copied into an empty folder with no repository around it,
and executed with nbclient under the smoke profile with only ``IWAE_DATA_DIR`` set. It must
find the models and the result files the package ships, and pass.

The new environment takes torch, numpy, nbclient, ... from this one (a ``.pth`` file naming
this environment's site-packages; their own ``.pth`` files, among them the editable install of
the package, are not processed), so nothing is downloaded and only the wheel is new.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "04_reconstructions.ipynb"  # loads two shipped models


def _data_dir() -> str:
    d = os.environ.get("IWAE_DATA_DIR")
    if not d or not (Path(d) / "mnist").is_dir():
        pytest.skip("IWAE_DATA_DIR with mnist/ is needed (CI sets it)")
    return d


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    """A new venv with the wheel of the package installed in it: -> its python."""
    tmp = tmp_path_factory.mktemp("fresh")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, capture_output=True,
                   timeout=300)
    wheel = next(wheels.glob("iwae_tutorial-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:  # what pip does for a pure-Python wheel
        z.extractall(site)
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _clean_env(data_dir: str, **extra: str) -> dict[str, str]:
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, "IWAE_DATA_DIR": data_dir, "IWAE_PROFILE": "smoke", **extra}


def test_the_wheel_carries_the_shipped_models_and_results(fresh_python, tmp_path):
    data_dir = _data_dir()
    probe = ("import json, iwae_tutorial, pathlib; from iwae_tutorial.results import "
             "published_dir; from iwae_tutorial.runs import SHIPPED_DIR, find_trained; "
             "f = find_trained('mnist', 'iwae', 5, [[200, 200, 50]]); "
             "print(json.dumps({'package': iwae_tutorial.__file__, 'published': "
             "str(published_dir()), 'shipped': str(SHIPPED_DIR), "
             "'found': str(f[0]) if f else None}))")
    out = subprocess.run([str(fresh_python), "-c", probe], cwd=tmp_path, check=True,
                         capture_output=True, text=True, env=_clean_env(data_dir), timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    site = str(fresh_python.parent.parent)
    assert got["package"].startswith(site), got  # the installed copy, not the repository
    assert got["published"].startswith(site) and got["published"].endswith("published"), got
    assert got["found"] and got["found"].startswith(got["shipped"]), got


def test_a_chapter_runs_alone_in_a_fresh_kernel(fresh_python, tmp_path):
    data_dir = _data_dir()
    work = tmp_path / "empty"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / CHAPTER, work / CHAPTER)
    run = ("import nbformat, sys; from nbclient import NotebookClient; "
           "nb = nbformat.read(sys.argv[1], as_version=4); "
           "NotebookClient(nb, timeout=600, kernel_name='python3', "
           "resources={'metadata': {'path': '.'}}).execute(); "
           "nbformat.write(nb, sys.argv[1])")
    proc = subprocess.run([str(fresh_python), "-c", run, CHAPTER], cwd=work,
                          capture_output=True, text=True, env=_clean_env(data_dir),
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads((work / CHAPTER).read_text())
    text = "\n".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                     for o in c.get("outputs", []))
    assert "shipped with the package" in text, text[:2000]  # the shipped models were used
    assert not any(o.get("output_type") == "error" for c in nb["cells"]
                   for o in c.get("outputs", []))
