"""The one result schema, written and read here, and the paper's Table 1 laid out from it.

Every trained model is recorded the same way, by :func:`model_record`: in the ``result.json`` of
``train``, the ``eval.json`` of ``evaluate`` and each entry of ``configurations`` in the table
files of ``reproduce``. Its evaluation fields come from :func:`evaluation_fields`. Files
written before this schema (keys ``test_nll``, ``test_nll_stderr``, ``wall_seconds``,
``epochs_done``, ``final_train_bound``, ``run_name``) are read through :func:`read_record`,
the one place that knows the old names; their provenance is kept as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .paper import PAPER_EPOCHS, TABLE1_KS, paper_numbers

__all__ = ["published_dir", "SCHEMA", "model_record", "evaluation_fields", "read_record",
           "current_keys",
           "read_run_result", "load_result", "find_results", "table1_cells", "table1_order",
           "pack_per_image", "unpack_per_image", "slim_record",
           "table1_markdown", "table1_text",
           "active_units_markdown", "provenance_markdown", "gap_summary", "batch_study_rows",
           "batch_study_markdown", "check_finite_scores", "check_replaceable"]

SCHEMA = "iwae-tutorial/result-1"


def published_dir() -> Path | None:
    """The project's committed result files: ``iwae_tutorial/published/`` in an installed
    package (the wheel carries ``results/`` there), else ``results/`` of the source tree the
    package runs from; None when neither exists. A chapter opened alone in a fresh kernel
    (Colab) thus shows the same tables as the built book."""
    here = Path(__file__).resolve().parent
    for d in (here / "published", here.parent.parent / "results"):
        if d.is_dir() and any(d.glob("*.json")):
            return d
    return None
#: old key -> key of the one schema (files written before it)
_OLD_KEYS = {"test_nll": "nll", "test_nll_stderr": "nll_stderr", "test_nll_float32": "nll_float32",
             "wall_seconds": "wall_time_s",
             "epochs_done": "epochs", "final_train_bound": "train_bound", "run_name": "name"}

_REQUIRED = ("dataset", "budget", "protocol", "configurations", "provenance")
KS = TABLE1_KS
ROWS = (("vae", 1), ("iwae", 1), ("vae", 2), ("iwae", 2))


def evaluation_fields(log_likelihood: Any, *, k: int, n_total: int, seed: int,
                      binarized: bool, active_units: Any, active_units_n: int,
                      threshold: float, subset: str | None = None) -> dict[str, Any]:
    """The evaluation part of a record: test NLL = -mean L_k over the first n test images
    (binarized once with ``seed`` when ``binarized``), its standard error, and the active
    units counted the paper's way (see :func:`iwae_tutorial.evaluate.paper_active_units`).
    ``subset``: how the images were chosen (``evaluate.eval_subset_text``); default: the
    first n.

    log_likelihood: [n] float64 per-image L_k; active_units: an ``ActiveUnits``.
    """
    nll = -log_likelihood
    n = int(nll.shape[0])
    return {
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std() / math.sqrt(n)) if n > 1 else None,
        "eval_k": int(k),
        "eval_n": n,
        "eval_n_total": int(n_total),
        "eval_subset": subset or ("all test images" if n == n_total
                                  else f"the first {n} of the {n_total} test images"),
        "eval_seed": int(seed),
        "test_binarization": (f"one fixed Bernoulli draw (CPU generator seed {seed})"
                              if binarized else "none"),
        "active_units": list(active_units.counts),
        "active_units_total": int(sum(active_units.counts)),
        "active_units_variances": [v.tolist() for v in active_units.variances],
        "active_units_n": int(active_units_n),
        "active_units_threshold": float(threshold),
    }


def model_record(cfg: Any, dataset: str, history: list[dict],
                 evaluation: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """One trained model, as every result file records it.

    Args:
        cfg: the model's :class:`~iwae_tutorial.runs.RunConfig` (its fields are recorded as
            ``config``, its ``name`` as ``name``).
        dataset: the data set's name.
        history: the per-epoch log of training (``epoch``, ``train_bound``, ...).
        evaluation: :func:`evaluation_fields`, or None when it was not evaluated.
        extra: more fields (``wall_time_s``, ``device``, ``run_dir``, ...).
    """
    config = asdict(cfg)
    layers = [list(s) for s in config["layers"]]
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "name": cfg.name,
        "dataset": dataset,
        "config": dict(config),
        "objective": config["objective"],
        "k": int(config["k"]),
        "stochastic_layers": len(layers),
        "layers": layers,
        "seed": int(config["seed"]),
        "epochs": int(history[-1]["epoch"]) if history else 0,
        "train_bound": float(history[-1]["train_bound"]) if history else None,
        "train_bound_per_epoch": [float(h["train_bound"]) for h in history],
        "nll": None, "nll_stderr": None, "eval_k": None, "eval_n": None,
        "active_units": None,
    }
    if evaluation is not None:
        record.update(evaluation)
    paper = paper_numbers(dataset, record["objective"], record["k"], len(layers))
    record["paper"] = paper
    record["gap_to_paper_nll"] = (record["nll"] - paper["nll"]
                                  if record["nll"] is not None and paper["nll"] is not None
                                  else None)
    record.update(extra)
    return record


def current_keys(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the keys of files written before the one schema renamed
    (``test_nll`` -> ``nll``, ...); everything else as it is."""
    return {_OLD_KEYS.get(k, k): v for k, v in record.items()}


def read_record(record: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """A model record in the one schema, whether it was written in it or before it: old key
    names mapped, and the paper's numbers (quoted constants, not measurements) taken from
    :mod:`iwae_tutorial.paper`; the measurements and the provenance are kept as written."""
    out = current_keys(record)
    if "objective" not in out and "config" in out:
        cfg = out["config"]
        out.update(objective=cfg["objective"], k=cfg["k"], layers=cfg["layers"],
                   stochastic_layers=len(cfg["layers"]), seed=cfg["seed"])
    dataset = dataset or out.get("dataset")
    if dataset is not None and "objective" in out:
        paper = paper_numbers(dataset, out["objective"], int(out["k"]),
                              int(out.get("stochastic_layers", len(out["layers"]))))
        out["paper"] = paper
        out["gap_to_paper_nll"] = (out["nll"] - paper["nll"] if out.get("nll") is not None
                                   and paper["nll"] is not None else None)
    return out


def read_run_result(path: str | Path) -> dict[str, Any]:
    """The ``result.json`` of ``train`` or the ``eval.json`` of ``evaluate``, in the one
    schema."""
    path = Path(path)
    try:
        return read_record(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the result file {path}: {e}") from e


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
    result["configurations"] = [read_record(c, result["dataset"])
                                for c in result["configurations"]]
    result["_path"] = str(path)
    return result


def find_results(results_dir: str | Path = "results", dataset: str | None = None
                 ) -> list[dict[str, Any]]:
    """All complete result files in ``results_dir`` (optionally of one dataset), longest
    training first; a malformed file is skipped (the others are still found)."""
    out = []
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            r = load_result(p)
            if r.get("status") == "complete" and (dataset is None or r["dataset"] == dataset):
                out.append((-int(r["protocol"]["epochs"]), len(out), r))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            continue
    return [r for *_, r in sorted(out, key=lambda t: t[:2])]


def check_finite_scores(result: dict[str, Any], path: str | Path) -> None:
    """A ValueError naming ``path`` (the table file about to be written) when a cell's test
    NLL, in ``configurations`` or in a stage, is missing, NaN or infinite."""
    cells = list(result.get("configurations", [])) + [
        c for st in result.get("stages", []) for c in st.get("configurations", [])]
    bad = sorted({str(c.get("name")) for c in cells
                  if not isinstance(c.get("nll"), (int, float)) or not math.isfinite(c["nll"])})
    if bad:
        raise ValueError(f"{path} would record a NaN or infinite test NLL for "
                         f"{', '.join(bad)}; nothing was written. Delete the saved scores "
                         "(stages.pt and the stages/ folders under --run-root) to score them "
                         "again, or --restart")


def check_replaceable(path: str | Path, settings: dict[str, Any]) -> None:
    """Refuse (a ValueError naming ``path`` and ``--force``) to replace an existing result
    file whose ``protocol`` differs from ``settings`` (seed, eval_k, ...; keys an older file
    lacks are not compared) or that is no result file at all."""
    path = Path(path)
    if not path.exists():
        return
    fix = "write elsewhere (--results-dir), or replace it (--force)"
    try:
        protocol = json.loads(path.read_text()).get("protocol")
    except (OSError, ValueError, AttributeError):
        protocol = None
    if not isinstance(protocol, dict):
        raise ValueError(f"{path} exists and is not a result file of reproduce; move it "
                         f"away, {fix}")
    diffs = [f"{key} {protocol[key]!r} there, {value!r} now" for key, value in settings.items()
             if key in protocol and protocol[key] != value]
    if diffs:
        raise ValueError(f"{path} holds a result of other settings ({'; '.join(diffs)}); "
                         f"rerun with its settings to continue it, {fix}")


def table1_cells(result: dict[str, Any]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """{(objective, stochastic layers, k): configuration entry} for the Table 1 cells."""
    return {(c["objective"], int(c["stochastic_layers"]), int(c["k"])): c
            for c in result["configurations"]}


#: per-image L_k values are stored as base64 text: "u16c:" + little-endian uint16 centinats of
#: the NLL (-L_k) when every value lies in [0, 655.35] nats, else little-endian int32
#: millinats of L_k (no prefix; the first files' format)
U16_PREFIX = "u16c:"


def pack_per_image(ll: Any) -> str:
    """Per-image L_k values [n] (nats, log-likelihoods) -> compact text (2 bytes per image,
    exact to 0.005 nats; 4 bytes and 0.0005 nats when an NLL is outside [0, 655.35]); read
    back by :func:`unpack_per_image`."""
    import base64

    import numpy as np

    v = np.asarray(ll, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("per-image log-likelihoods must be finite to be stored")
    c = np.rint(-v * 100)
    if c.size and c.min() >= 0 and c.max() <= 65535:
        return U16_PREFIX + base64.b64encode(c.astype("<u2").tobytes()).decode("ascii")
    return base64.b64encode(np.rint(v * 1000).astype("<i4").tobytes()).decode("ascii")


def unpack_per_image(text: str) -> Any:
    """The inverse of :func:`pack_per_image`: [n] float64 numpy array of L_k (nats)."""
    import base64

    import numpy as np

    if text.startswith(U16_PREFIX):
        raw = base64.b64decode(text[len(U16_PREFIX):])
        return -np.frombuffer(raw, dtype="<u2").astype(np.float64) / 100
    return np.frombuffer(base64.b64decode(text), dtype="<i4").astype(np.float64) / 1000


def slim_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record of one stage of a stage-wise table, without what the table's furthest record
    already holds (``config``, ``train_bound_per_epoch``), unit activities to 4 digits: the
    stage-wise file ships with the package and must stay small."""
    out = {k: v for k, v in record.items() if k not in ("config", "train_bound_per_epoch")}
    if out.get("active_units_variances") is not None:
        out["active_units_variances"] = [[float(f"{v:.4g}") for v in layer]
                                         for layer in out["active_units_variances"]]
    return out


def table1_order(records: list[dict[str, Any]]) -> list[str]:
    """The names of ``records`` in the paper's order: layers, then VAE before IWAE, then k."""
    def key(r: dict[str, Any]) -> tuple:
        return (int(r["stochastic_layers"]), r["objective"] != "vae", r["objective"],
                int(r["k"]), r["name"])
    return [r["name"] for r in sorted(records, key=key)]


def table1_text(result: dict[str, Any]) -> str:
    """A ``reproduce`` result as plain text: the protocol in one line, then per configuration
    its NLL, the paper's, the final training bound and the active units (what it prints)."""
    p = result["protocol"]
    lines = [f"{result['dataset']} / budget {result['budget']}: {p['n_train']} training images, "
             f"{p['epochs']} epochs; NLL = -L_{p['eval_k']} on {p['eval_subset']}",
             f"{'configuration':28s} {'NLL':>8s} {'paper':>7s} {'train bound':>12s} "
             "active units"]
    for c in result["configurations"]:
        paper = c["paper"]["nll"]
        lines.append(f"{c['name']:28s} {c['nll']:8.2f} {paper if paper is not None else '-':>7} "
                     f"{c['train_bound']:12.2f} {c['active_units']}")
    return "\n".join(lines)


def _fmt(v: float | None, nd: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def table1_markdown(result: dict[str, Any]) -> str:
    """Test NLL per cell as "ours (paper, gap)" in the paper's layout, as a Markdown table; a
    paper number the project could not verify is starred, with a note under the table."""
    cells = table1_cells(result)
    head = "| model | stochastic layers | " + " | ".join(f"k = {k}" for k in KS) + " |"
    lines = [head, "|---|---|" + "---|" * len(KS)]
    unverified = False
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
                star = "*" if c["paper"].get("verified") is False else ""
                unverified = unverified or bool(star)
                ours += f" ({paper:.2f}{star}, {c['nll'] - paper:+.2f})"
            row.append(ours)
        lines.append("| " + " | ".join(row) + " |")
    if unverified:
        lines.append("\n\\* unverified: the project found no copy of the paper's table to check "
                     "this number against")
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
        f"protocol ({p['epochs']} of {p.get('paper_epochs', PAPER_EPOCHS)} epochs on "
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


def batch_study_rows(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch-size study (``scripts/batch_size_study.py``) per (objective, k): for each batch
    size the test NLL averaged over the seeds, the seed-to-seed spread (max - min), its
    standard error by L_k, the wall time per epoch, and the gap to batch 20."""
    by_batch = {int(b): v for b, v in study["by_batch"].items()}
    base = min(by_batch)
    rows = []
    keys = sorted({(c["objective"], c["k"]) for v in by_batch.values()
                   for c in v["configurations"]}, key=lambda t: (t[1], t[0] != "vae"))
    for objective, k in keys:
        row: dict[str, Any] = {"objective": objective, "k": k, "by_batch": {}}
        for b, v in sorted(by_batch.items()):
            recs = [read_record(c) for c in v["configurations"]
                    if c["objective"] == objective and c["k"] == k]
            nlls = [r["nll"] for r in recs]
            epochs = max(1, recs[0]["epochs"])
            row["by_batch"][b] = {
                "nll": sum(nlls) / len(nlls), "spread": max(nlls) - min(nlls),
                "stderr": max(r["nll_stderr"] or 0.0 for r in recs), "seeds": len(nlls),
                "active_units": sum(r["active_units_total"] for r in recs) / len(recs),
                "seconds_per_epoch": v["wall_time_s"]["train_all_sessions"] / epochs}
        for cell in row["by_batch"].values():
            cell["gap_to_base"] = cell["nll"] - row["by_batch"][base]["nll"]
        rows.append(row)
    return rows


def batch_study_markdown(study: dict[str, Any]) -> str:
    """The batch-size study as a Markdown table: NLL (mean over seeds, with the seeds' spread)
    per batch size, the gap to batch 20, and the wall time per epoch of the fleet."""
    rows = batch_study_rows(study)
    batches = sorted(rows[0]["by_batch"])
    base = batches[0]
    head = ("| model | " + " | ".join(f"batch {b}" for b in batches) + " | "
            + " | ".join(f"batch {b} - batch {base}" for b in batches[1:]) + " |")
    lines = [head, "|---|" + "---|" * (2 * len(batches) - 1)]
    for r in rows:
        cells = [f"{r['by_batch'][b]['nll']:.2f} (spread {r['by_batch'][b]['spread']:.2f})"
                 for b in batches]
        gaps = [f"{r['by_batch'][b]['gap_to_base']:+.2f}" for b in batches[1:]]
        lines.append(f"| {r['objective'].upper()} k = {r['k']} | " + " | ".join(cells + gaps)
                     + " |")
    return "\n".join(lines)
