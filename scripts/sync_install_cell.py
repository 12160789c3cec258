"""Write the install cell (``iwae_tutorial.notebook.install_cell``) into every chapter.

    python scripts/sync_install_cell.py          # rewrite notebooks/*.ipynb where it differs
    python scripts/sync_install_cell.py --check  # exit 1 if a notebook differs

The install cell is the first code cell of a chapter; its text has one source, the package.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from iwae_tutorial.checkpoints import write_text_atomic
from iwae_tutorial.notebook import install_cell

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    want = install_cell()
    stale = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
        if "".join(cell["source"]) == want:
            continue
        stale.append(path.name)
        if not check:
            cell["source"] = want.splitlines(keepends=True)
            write_text_atomic(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    if stale:
        print(("differ: " if check else "rewrote: ") + ", ".join(stale))
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
