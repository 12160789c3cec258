"""Write the stage-wise Table 1 of the committed result file into README.md (between the
``<!-- stage-table -->`` markers); ``tests/test_readme_numbers.py`` checks that they agree.

    python scripts/update_readme_table.py
"""

from __future__ import annotations

import re
from pathlib import Path

from iwae_tutorial.stagewise import find_stagewise, seconds_per_epoch, stages_markdown

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- stage-table -->", "<!-- /stage-table -->"


def table_block() -> str:
    result = find_stagewise(ROOT / "results", "mnist")
    if result is None:
        raise SystemExit("no stage-wise MNIST result file in results/")
    name = Path(result["_path"]).name
    prov = result["provenance"]
    speed = "; ".join(f"{part} fleet {s:.0f} s" for part, s in seconds_per_epoch(result).items())
    return (f"{START}\n{stages_markdown(result)}\n\nTest NLL (nats) by L_5000 on the first "
            f"{result['protocol']['eval_n']:,} test images, from `results/{name}` "
            f"({result['status']}). Training time per epoch: {speed} ({prov['device_name']}, "
            f"{prov['torch_threads']} threads).\n{END}")


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda m: table_block(), text,
                 flags=re.S)
    if new == text and START not in text:
        raise SystemExit(f"README.md has no {START} ... {END} block")
    readme.write_text(new)
    print("README.md: stage table updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
