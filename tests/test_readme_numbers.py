"""The numbers the README quotes are the ones in the result files it names."""

import json
import re
from pathlib import Path

import pytest

from iwae_tutorial.results import read_run_result

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| (?P<run>[^|]+) \| (?P<nll>[\d.]+) ± (?P<se>[\d.]+) "
                 r"\| `(?P<file>results/[^`]+)` \|$")


def readme_rows() -> list[dict]:
    return [m.groupdict() for line in (ROOT / "README.md").read_text().splitlines()
            if (m := ROW.match(line))]


def test_the_readme_has_the_one_epoch_table():
    assert len(readme_rows()) >= 2


@pytest.mark.parametrize("row", readme_rows(), ids=lambda r: r["file"])
def test_readme_number_matches_its_result_file(row):
    result = read_run_result(ROOT / row["file"])  # the one schema, old files included
    assert f"{result['nll']:.2f}" == row["nll"]
    assert f"{result['nll_stderr']:.2f}" == row["se"]
    assert result["eval_k"] == 5000 and result["eval_n"] == 10_000  # all test images
    assert len(result["provenance"]["git_commit"]) == 40
    m = re.search(r"(\d+) epochs", row["run"])
    epochs = int(m.group(1)) if m else 1 if "one epoch" in row["run"] else None
    assert result["epochs"] == epochs, row["run"]
    assert result["config"]["objective"].upper() in row["run"].upper()
    lr = result["config"].get("lr")
    assert ("lr2e-3" in row["file"]) == (lr == 2e-3)


def test_the_chosen_learning_rate_is_the_validation_best():
    sweep = json.loads((ROOT / "results" / "one-epoch-lr.json").read_text())
    means = {float(k): v for k, v in sweep["mean_valid_nll_by_lr"].items()}
    assert sweep["best_lr"] == min(means, key=means.get) == 2e-3
    assert "validation" in sweep["protocol"]["score"]


def test_readme_timings_match_their_file():
    text = " ".join((ROOT / "README.md").read_text().split())
    timings = json.loads((ROOT / "results" / "cli-timings-cpu.json").read_text())
    for row in timings["epochs"]:
        if row["threads"] == 2:
            assert f"{row['epoch_seconds']:.1f} s (k = {row['k']})" in text
    two = sorted(round(e["eval_nll_seconds"]) for e in timings["l5000_10000_test_images"]
                 if e["threads"] == 2 and e["eval_n"] == 10_000)
    assert f"{two[0]} to {two[-1]} s" in text


def test_the_stage_table_is_the_result_files():
    """README's stage-wise table is what scripts/update_readme_table.py writes from the
    committed result file (rerun it when a stage lands)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("urt", ROOT / "scripts" /
                                                  "update_readme_table.py")
    urt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(urt)
    assert urt.table_block() in (ROOT / "README.md").read_text()
