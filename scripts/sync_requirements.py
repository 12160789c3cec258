"""Write requirements.txt from pyproject.toml, the one list of dependencies: the package's
``dependencies`` and its ``book``, ``test`` and ``browser`` extras, in that order.

    python scripts/sync_requirements.py          # rewrite requirements.txt
    python scripts/sync_requirements.py --check  # exit 1 if it differs (tests/test_layout.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("# Generated from pyproject.toml by scripts/sync_requirements.py: edit pyproject.toml.\n"
          "# Install torch first on a CPU-only machine: pip install torch==2.13.0 (see README).\n")
EXTRAS = ("book", "test", "browser")


def requirements_text() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return HEADER + "".join(f"{line}\n" for line in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if it differs")
    args = p.parse_args(argv)
    path, text = ROOT / "requirements.txt", requirements_text()
    if args.check:
        if path.read_text() != text:
            print(f"{path} differs from pyproject.toml; run python scripts/sync_requirements.py",
                  file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
