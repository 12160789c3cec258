"""Reading the result files written by ``python -m iwae_tutorial reproduce`` and laying them out
as the paper's Table 1 (test NLL and active units, VAE/IWAE x k x stochastic layers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["load_result", "find_results", "table1_cells", "table1_markdown",
           "active_units_markdown", "provenance_markdown", "gap_summary"]

_REQUIRED = ("dataset", "budget", "protocol", "configurations", "provenance")
KS = (1, 5, 50)
ROWS = (("vae", 1), ("iwae", 1), ("vae", 2), ("iwae", 2))


def load_result(path: str | Path) -> dict[str, Any]:
    """One result file, checked for the keys the book relies on."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the result file {path}: {e}") from e
    missing = [k for k in _REQUIRED if k not in result]
    if missing:
        raise ValueError(f"{path} is not a result of `iwae_tutorial reproduce` (no {missing})")
    result["_path"] = str(path)
    return result


def find_results(results_dir: str | Path = "results", dataset: str | None = None
                 ) -> list[dict[str, Any]]:
    """All complete result files in ``results_dir`` (optionally of one dataset), longest
    training first."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            r = load_result(p)
        except ValueError:
            continue
        if r.get("status") == "complete" and (dataset is None or r["dataset"] == dataset):
            out.append(r)
    return sorted(out, key=lambda r: -int(r["protocol"]["epochs"]))


def table1_cells(result: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """{(objective, stochastic layers, k): configuration entry} for the Table 1 cells."""
    return {(c["objective"], int(c["stochastic_layers"]), int(c["k"])): c
            for c in result["configurations"]}


def _fmt(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def table1_markdown(result: dict[str, Any]) -> str:
    """Test NLL per cell as "ours (paper, gap)" in the paper's layout, as a Markdown table."""
    cells = table1_cells(result)
    head = "| model | stochastic layers | " + " | ".join(f"k = {k}" for k in KS) + " |"
    lines = [head, "|---|---|" + "---|" * len(KS)]
    for obj, layers in ROWS:
        row = [obj.upper(), str(layers)]
        for k in KS:
            c = cells.get((obj, layers, k))
            if c is None:
                row.append("–")
                continue
            paper = c.get("paper", {}).get("nll")
            ours = _fmt(c["nll"])
            if c.get("nll_stderr") is not None:
                ours += f" ± {c['nll_stderr']:.2f}"
            if paper is not None:
                ours += f" ({paper:.2f}, {c['nll'] - paper:+.2f})"
            row.append(ours)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def active_units_markdown(result: dict[str, Any]) -> str:
    """Active units per cell ("h1+h2" for two layers), as a Markdown table."""
    cells = table1_cells(result)
    lines = ["| model | stochastic layers | " + " | ".join(f"k = {k}" for k in KS) + " |",
             "|---|---|" + "---|" * len(KS)]
    for obj, layers in ROWS:
        row = [obj.upper(), str(layers)]
        for k in KS:
            c = cells.get((obj, layers, k))
            row.append("–" if c is None else "+".join(str(a) for a in c["active_units"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def provenance_markdown(result: dict[str, Any]) -> str:
    """Where a result came from: protocol, command, commit, device, date, wall time."""
    p, prov = result["protocol"], result["provenance"]
    wall = result.get("wall_time_s", {})
    seconds = sum(float(wall.get(key) or 0.0) for key in ("train", "eval_nll", "active_units"))
    cmd = prov.get("command") or "?"
    if isinstance(cmd, list):
        cmd = " ".join(cmd)
    dirty = " (with uncommitted changes)" if prov.get("git_dirty") else ""
    return (
        f"**{result['dataset']}, budget `{result['budget']}`**: {p['budget_definition']}. "
        f"{'This is' if p.get('is_paper_protocol') else 'This is **not**'} the paper's "
        f"protocol ({p['epochs']} of {p.get('paper_epochs', 3280)} epochs on "
        f"{p['n_train']} training images; NLL by L_{p['eval_k']} on {p['eval_subset']}). "
        f"Written by `{cmd}` at commit `{str(prov.get('git_commit', '?'))[:12]}`{dirty} "
        f"with torch {prov.get('torch_version', '?')} on {prov.get('device_name', '?')} "
        f"({prov.get('device', '?')}), {prov.get('date_utc', '?')}; training and evaluation "
        f"took {seconds / 3600:.2f} h of wall time."
    )


def gap_summary(result: dict[str, Any]) -> dict[str, float]:
    """Mean, smallest and largest gap to the paper (ours - paper, nats) over the cells that
    have a paper number, and how many cells are within 0.3 nats."""
    gaps = [c["nll"] - c["paper"]["nll"] for c in result["configurations"]
            if c.get("paper", {}).get("nll") is not None]
    if not gaps:
        return {"n": 0, "mean": float("nan"), "min": float("nan"), "max": float("nan"),
                "within_0.3": 0}
    return {"n": len(gaps), "mean": sum(gaps) / len(gaps), "min": min(gaps), "max": max(gaps),
            "within_0.3": sum(abs(g) <= 0.3 for g in gaps)}
