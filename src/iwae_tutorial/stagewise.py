"""Table 1 stage by stage: reading ``reproduce``'s stage-wise result files, and what they say.

``python -m iwae_tutorial reproduce`` scores every model at the end of every stage of the
paper's schedule (after 1, 4, 13, 40, 121, ... epochs) on the same test images, and keeps each
image's L_5000 (``ll_per_image``). So two cells can be compared image by image: the IWAE - VAE
difference of test NLL is the mean of per-image differences, and its standard error is that of
the differences, much smaller than either cell's own error (the two models find the same
images hard).

- :func:`load_stagewise`: a result file, validated (a clear error naming the file otherwise);
- :func:`stage_cells`, :func:`furthest_stage`: the cells at one stage, the last stage reached;
- :func:`paired_gap`: the paired difference of two cells (mean, standard error);
- :func:`claims`: the paper's claims at one stage, each with its evidence and a verdict that
  says "holds", "not yet" or "undecided" (the 95% interval contains zero);
- :func:`verdict_markdown`, :func:`gaps_markdown`: those as text for the density chapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .paper import TABLE1_KS
from .results import read_record, table1_markdown, unpack_per_image

__all__ = ["Z95", "Cell", "load_stagewise", "find_stagewise", "stage_epochs", "stage_cells",
           "furthest_stage",
           "per_image_nll", "paired_gap", "claims", "verdict_markdown", "gaps_markdown",
           "stage_table_markdown", "series", "epochs_text", "gap_range", "convergence_markdown",
           "UNDECIDED", "undecided_units", "units_markdown", "seconds_per_epoch",
           "time_left", "time_left_text", "stages_markdown", "differences_markdown"]

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959964

#: a Table 1 cell: (objective, stochastic layers, k)
Cell = tuple[str, int, int]

_RECORD_KEYS = ("name", "objective", "k", "stochastic_layers", "nll", "nll_stderr",
                "ll_per_image", "active_units", "epochs")


def load_stagewise(path: str | Path) -> dict[str, Any]:
    """A stage-wise result file of ``reproduce``, checked: -> the parsed file, its stages in
    order of epochs, each record read in the one schema (:func:`results.read_record`).

    Raises ValueError (one line naming the file) when it is not such a file."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the result file {path}: {e}") from None
    stages = result.get("stages") if isinstance(result, dict) else None
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{path} holds no scored stages (not a stage-wise result of "
                         "`iwae_tutorial reproduce`)")
    for st in stages:
        cfgs = st.get("configurations") if isinstance(st, dict) else None
        if not isinstance(st.get("epochs"), int) or not isinstance(cfgs, list) or not cfgs:
            raise ValueError(f"{path}: a stage without epochs or configurations")
        for c in cfgs:
            missing = [k for k in _RECORD_KEYS if k not in c]
            if missing:
                raise ValueError(f"{path}: stage {st['epochs']}, {c.get('name')}: no {missing}")
            if c["epochs"] != st["epochs"] or not math.isfinite(float(c["nll"])):
                raise ValueError(f"{path}: stage {st['epochs']}, {c['name']}: inconsistent "
                                 "epochs or a non-finite NLL")
        st["configurations"] = [read_record(c, result.get("dataset")) for c in cfgs]
    result["stages"] = sorted(stages, key=lambda s: s["epochs"])
    result["_path"] = str(path)
    return result


def find_stagewise(results_dir: str | Path | None, dataset: str = "mnist"
                   ) -> dict[str, Any] | None:
    """The stage-wise result of ``dataset`` in ``results_dir`` that reached the most epochs
    (one-layer cells first, then two-layer), or None when there is none; malformed files are
    skipped."""
    if results_dir is None:
        return None
    found = []
    for p in sorted(Path(results_dir).glob(f"{dataset}-*.json")):
        try:
            r = load_stagewise(p)
        except ValueError:
            continue
        if r.get("dataset") == dataset:
            found.append(((furthest_stage(r, 1) or 0, furthest_stage(r, 2) or 0), r))
    return max(found, key=lambda t: t[0])[1] if found else None


def stage_epochs(result: dict[str, Any]) -> list[int]:
    """The epoch counts of the scored stages, ascending."""
    return [s["epochs"] for s in result["stages"]]


def stage_cells(result: dict[str, Any], epochs: int) -> dict[Cell, dict[str, Any]]:
    """{(objective, layers, k): record} of the cells scored after ``epochs`` epochs."""
    for s in result["stages"]:
        if s["epochs"] == epochs:
            return {(c["objective"], int(c["stochastic_layers"]), int(c["k"])): c
                    for c in s["configurations"]}
    raise KeyError(f"no stage after {epochs} epochs in {result.get('_path', 'the result')}")


def furthest_stage(result: dict[str, Any], layers: int) -> int | None:
    """The last stage at which the cells with ``layers`` stochastic layers were scored."""
    have = [e for e in stage_epochs(result)
            if any(key[1] == layers for key in stage_cells(result, e))]
    return max(have) if have else None


def series(result: dict[str, Any]) -> dict[Cell, list[dict[str, Any]]]:
    """{cell: its records, one per scored stage, in order of epochs}."""
    out: dict[Cell, list[dict[str, Any]]] = {}
    for e in stage_epochs(result):
        for key, rec in stage_cells(result, e).items():
            out.setdefault(key, []).append(rec)
    return out


def per_image_nll(record: dict[str, Any]) -> np.ndarray:
    """A record's test NLL per image (nats): [eval_n]."""
    return -unpack_per_image(record["ll_per_image"])


def paired_gap(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """Test NLL of ``a`` minus that of ``b``, image by image: (mean, standard error) in nats.
    Negative: ``a`` is better. Both must have been scored on the same images."""
    da, db = per_image_nll(a), per_image_nll(b)
    if da.shape != db.shape or a.get("eval_seed") != b.get("eval_seed"):
        raise ValueError(f"{a['name']} and {b['name']} were not scored on the same images")
    d = da - db
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def _verdict(mean: float, se: float) -> str:
    """"holds" when the 95% interval of a difference that should be negative is below zero,
    "not yet" when it is above, "undecided" when it contains zero."""
    if mean + Z95 * se < 0:
        return "holds"
    if mean - Z95 * se > 0:
        return "not yet"
    return "undecided"


def claims(result: dict[str, Any], layers: int, epochs: int | None = None) -> list[dict]:
    """The paper's claims about the cells with ``layers`` stochastic layers after ``epochs``
    epochs (default: the furthest stage), each a dict with ``claim``, ``k``, ``diff`` and
    ``se`` (paired, nats; negative means the claim's direction), ``paper_diff`` and
    ``verdict`` ("holds", "not yet", "undecided"):

    - ``iwae_beats_vae``: at k = 5 and k = 50, the IWAE's test NLL is below the VAE's;
    - ``more_samples_help``: for each model, k = 50 is below k = 5 (and k = 5 below k = 1).
    """
    epochs = furthest_stage(result, layers) if epochs is None else epochs
    cells = stage_cells(result, epochs)
    out = []
    for k in TABLE1_KS[1:]:
        iw, va = cells[("iwae", layers, k)], cells[("vae", layers, k)]
        d, se = paired_gap(iw, va)
        out.append({"claim": "iwae_beats_vae", "layers": layers, "epochs": epochs, "k": k,
                    "diff": d, "se": se, "paper_diff": _paper_diff(iw, va),
                    "verdict": _verdict(d, se)})
    for obj in ("vae", "iwae"):
        for k_lo, k_hi in zip(TABLE1_KS[:-1], TABLE1_KS[1:]):
            hi, lo = cells[(obj, layers, k_hi)], cells[(obj, layers, k_lo)]
            d, se = paired_gap(hi, lo)
            out.append({"claim": "more_samples_help", "layers": layers, "epochs": epochs,
                        "objective": obj, "k": (k_lo, k_hi), "diff": d, "se": se,
                        "paper_diff": _paper_diff(hi, lo), "verdict": _verdict(d, se)})
    return out


def _paper_diff(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    pa, pb = a["paper"]["nll"], b["paper"]["nll"]
    return None if pa is None or pb is None else pa - pb


def epochs_text(e: int) -> str:
    """"1 epoch", "4 epochs"."""
    return f"{e} epoch{'s' if e != 1 else ''}"


def _layers_text(layers: int) -> str:
    return f"{layers} stochastic layer{'s' if layers > 1 else ''}"


def verdict_markdown(result: dict[str, Any]) -> str:
    """Where the reproduction stands: for each number of layers, the furthest stage reached,
    the paper's claims there with their paired 95% intervals, and the range of the cells'
    gaps to the paper; Markdown (a block quote)."""
    lines = []
    for layers in (1, 2):
        e = furthest_stage(result, layers)
        if e is None:
            continue
        cells = stage_cells(result, e)
        lo, hi = gap_range(result, layers, e)
        cl = claims(result, layers, e)
        ahead = [c for c in cl if c["claim"] == "iwae_beats_vae"]
        more = [c for c in cl if c["claim"] == "more_samples_help"]
        parts = []
        for c in ahead:
            word = {"holds": "the IWAE is ahead", "not yet": "the VAE is still ahead",
                    "undecided": "no difference can be told yet"}[c["verdict"]]
            parts.append(f"at k = {c['k']} {word} ({_pm(c['diff'], c['se'])} nats; the "
                         f"paper: {c['paper_diff']:+.2f})")
        n_more = sum(c["verdict"] == "holds" for c in more)
        au = {o: cells[(o, layers, 50)]["active_units"] for o in ("vae", "iwae")}
        pau = {o: cells[(o, layers, 50)]["paper"].get("active_units") for o in au}
        units = (f"Active units at k = 50: IWAE {'+'.join(map(str, au['iwae']))}, VAE "
                 f"{'+'.join(map(str, au['vae']))}" + (
                     f" (the paper: {'+'.join(map(str, pau['iwae']))} and "
                     f"{'+'.join(map(str, pau['vae']))})." if all(pau.values()) else "."))
        lines.append(
            f"- **{_layers_text(layers)}, after {e} of {result['protocol']['paper_epochs']:,} "
            f"epochs**: {'; '.join(parts)}. More samples lower the test NLL in {n_more} of "
            f"{len(more)} paired comparisons (k = 1 to 5 and 5 to 50, both models). The cells "
            f"are {lo:.2f} to {hi:.2f} nats above the paper's numbers. {units}")
    head = ("**Where the reproduction stands.** Each difference is IWAE minus VAE test NLL, "
            "paired over the same test images, with its 95% interval; negative means the "
            "IWAE is better.")
    return "> " + head + "\n>\n" + "\n".join("> " + line for line in lines)


def _pm(mean: float, se: float) -> str:
    return f"{mean:+.2f} ± {Z95 * se:.2f}"


def gaps_markdown(result: dict[str, Any]) -> str:
    """Every cell at its furthest stage: test NLL ± its standard error, the paper's number and
    the gap (Markdown table)."""
    rows = ["| cell | epochs | test NLL | paper | gap |", "|---|---|---|---|---|"]
    for layers in (1, 2):
        e = furthest_stage(result, layers)
        if e is None:
            continue
        cells = stage_cells(result, e)
        for obj in ("vae", "iwae"):
            for k in TABLE1_KS:
                c = cells[(obj, layers, k)]
                paper = c["paper"]["nll"]
                rows.append(f"| {obj.upper()} {layers}L k = {k} | {e} | {c['nll']:.2f} ± "
                            f"{c['nll_stderr']:.2f} | {paper:.2f} | {c['nll'] - paper:+.2f} |")
    return "\n".join(rows)


def stage_table_markdown(result: dict[str, Any], epochs: int) -> str:
    """Table 1 as the paper lays it out, for the cells scored after ``epochs`` epochs."""
    cells = list(stage_cells(result, epochs).values())
    return table1_markdown({"configurations": cells})


def gap_range(result: dict[str, Any], layers: int, epochs: int) -> tuple[float, float]:
    """The smallest and largest gap to the paper's number among the cells with ``layers``
    stochastic layers after ``epochs`` epochs (nats)."""
    gaps = [c["gap_to_paper_nll"] for key, c in stage_cells(result, epochs).items()
            if key[1] == layers and c.get("gap_to_paper_nll") is not None]
    return min(gaps), max(gaps)


def convergence_markdown(result: dict[str, Any]) -> str:
    """One sentence per number of layers: how far the cells were from the paper after the
    first scored stage and after the furthest."""
    out = []
    for layers in (1, 2):
        e = furthest_stage(result, layers)
        if e is None:
            continue
        first = min(x for x in stage_epochs(result)
                    if any(key[1] == layers for key in stage_cells(result, x)))
        lo0, hi0 = gap_range(result, layers, first)
        lo, hi = gap_range(result, layers, e)
        if e == first:
            out.append(f"With {_layers_text(layers)} the cells are {lo:.1f} to {hi:.1f} nats "
                       f"above the paper's numbers after {epochs_text(e)}, the only stage "
                       "scored so far.")
        else:
            out.append(f"With {_layers_text(layers)} the cells were {lo0:.1f} to {hi0:.1f} "
                       f"nats above the paper's numbers after {epochs_text(first)}, and "
                       f"{lo:.1f} to {hi:.1f} after {e}.")
    return " ".join(out)


#: unit activities within a decade of the threshold 0.01 are "undecided"
UNDECIDED = (1e-3, 1e-1)


def undecided_units(record: dict[str, Any]) -> int:
    """How many of a record's units (all layers) have an activity within a decade of the
    threshold: neither clearly active nor clearly collapsed."""
    lo, hi = UNDECIDED
    return sum(lo < v < hi for layer in record["active_units_variances"] for v in layer)


def units_markdown(result: dict[str, Any], k: int = 50) -> str:
    """Active units of the k-sample VAE and IWAE at the first and the furthest stage of each
    number of layers, the paper's counts, and how many units are undecided."""
    out = []
    for layers in (1, 2):
        e = furthest_stage(result, layers)
        if e is None:
            continue
        first = stage_epochs(result)[0]
        parts = []
        for obj in ("vae", "iwae"):
            c0, c = stage_cells(result, first)[(obj, layers, k)], stage_cells(result, e)[
                (obj, layers, k)]
            paper = c["paper"].get("active_units")
            parts.append(f"the {obj.upper()} {'+'.join(map(str, c['active_units']))} active "
                         f"units after {epochs_text(e)} "
                         f"({'+'.join(map(str, c0['active_units']))} after {first}; the paper: "
                         f"{'+'.join(map(str, paper)) if paper else 'no count'}), "
                         f"{undecided_units(c)} undecided (after {first}: "
                         f"{undecided_units(c0)})")
        out.append(f"With {_layers_text(layers)} and k = {k}: " + "; ".join(parts) + ".")
    return " ".join(out)


def stage_training(result: dict[str, Any]) -> dict[str, list[tuple[int, int, float]]]:
    """Each scored stage's measured training, per fleet ("1L", "2L"):
    -> {fleet: [(epochs at the stage's end, epochs it trained, training seconds), ...]}."""
    out: dict[str, list[tuple[int, int, float]]] = {}
    for part, ends in result["protocol"].get("stage_ends", {}).items():
        prev = 0
        for st in result["stages"]:
            e = st["epochs"]
            if e in ends and part in st.get("wall_time_s", {}):
                out.setdefault(part, []).append((e, e - prev, st["wall_time_s"][part]["train"]))
                prev = e
    return out


def seconds_per_epoch(result: dict[str, Any]) -> dict[str, float]:
    """Measured training seconds per epoch of each fleet ("1L", "2L") over the scored stages:
    the training time the stages record, divided by their epochs."""
    return {part: sum(secs for _, _, secs in stages) / sum(n for _, n, _ in stages)
            for part, stages in stage_training(result).items()}


def time_left(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What the unscored stages of ``result``'s protocol will take at the pace its scored
    stages measured, per fleet ("1L", "2L") with at least one scored stage: the measured
    training seconds per epoch (:func:`seconds_per_epoch`) times the epochs after the last
    scored stage, plus the mean measured seconds of scoring one stage (L_k and the active
    units) times the stages left. Epochs trained after the last scored stage are counted as
    left (a run that stopped mid-stage is estimated from that stage's start).

    -> {fleet: {"seconds_per_epoch", "epochs_left", "seconds_per_scoring", "stages_left",
    "seconds_left"}}"""
    pace = seconds_per_epoch(result)
    protocol = result["protocol"]
    out = {}
    for part, ends in protocol.get("stage_ends", {}).items():
        scored = [st for st in result["stages"]
                  if st["epochs"] in ends and part in st.get("wall_time_s", {})]
        if not scored or part not in pace:
            continue
        epochs_left = int(protocol["epochs_by_layers"][part]) - max(st["epochs"] for st in scored)
        stages_left = len(ends) - len(scored)
        scoring = sum(st["wall_time_s"][part]["eval_nll"] + st["wall_time_s"][part].get(
            "active_units", 0.0) for st in scored) / len(scored)
        out[part] = {"seconds_per_epoch": pace[part], "epochs_left": epochs_left,
                     "seconds_per_scoring": scoring, "stages_left": stages_left,
                     "seconds_left": pace[part] * epochs_left + scoring * stages_left}
    return out


def _duration(seconds: float) -> str:
    """"42 min", "7.5 h", "3.2 days"."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def time_left_text(result: dict[str, Any]) -> str:
    """:func:`time_left` in one sentence, naming the device(s) that measured the pace (those
    of the scored stages): "At the pace measured so far on DEVICE (cuda): the one-layer fleet
    S s per epoch and T s per scoring, E epochs and N scorings left: D h; ...; in all about
    D days." """
    left = time_left(result)
    names = {"1L": "one-layer", "2L": "two-layer"}
    devices = sorted({f"{prov.get('device_name', '?')} ({prov.get('device', '?')})"
                      for st in result["stages"] for prov in st.get("provenance", {}).values()
                      if isinstance(prov, dict)}) or ["an unrecorded device"]
    device = " and ".join(devices)
    if not left:
        return (f"No stage of {result['protocol']['name']} is scored yet, so no pace has been "
                "measured: the first estimate comes after the first stage.")
    def n(count: int, what: str) -> str:
        return f"{count:,} {what}{'' if count == 1 else 's'}"

    parts = [f"the {names.get(p, p)} fleet {v['seconds_per_epoch']:,.1f} s per epoch and "
             f"{v['seconds_per_scoring']:,.1f} s per scoring, {n(v['epochs_left'], 'epoch')} "
             f"and {n(v['stages_left'], 'scoring')} left: {_duration(v['seconds_left'])}"
             for p, v in left.items()]
    missing = [names.get(p, p) for p in result["protocol"].get("stage_ends", {})
               if p not in left]
    total = sum(v["seconds_left"] for v in left.values())
    text = (f"At the pace measured so far on {device}: " + "; ".join(parts)
            + f"; in all about {_duration(total)}")
    if missing:
        text += (f", plus the {' and '.join(missing)} fleet, which has no scored stage yet "
                 "to measure its pace")
    return text + "."


def stages_markdown(result: dict[str, Any]) -> str:
    """Every cell's test NLL after every scored stage (columns: epochs), the paper's number in
    the last column: the numbers of the convergence figure as a Markdown table."""
    epochs = stage_epochs(result)
    rows = ["| cell | " + " | ".join(f"{e} ep." for e in epochs) + " | paper (3,280) |",
            "|---|" + "---|" * (len(epochs) + 1)]
    ser = series(result)
    for layers in (1, 2):
        for obj in ("vae", "iwae"):
            for k in TABLE1_KS:
                recs = {r["epochs"]: r for r in ser.get((obj, layers, k), [])}
                if not recs or (obj == "iwae" and k == 1):
                    continue
                name = f"{'VAE = IWAE' if k == 1 else obj.upper()} {layers}L k = {k}"
                paper = next(iter(recs.values()))["paper"]["nll"]
                rows.append(f"| {name} | " + " | ".join(
                    f"{recs[e]['nll']:.2f}" if e in recs else "–" for e in epochs)
                    + f" | {paper:.2f} |")
    return "\n".join(rows)


def differences_markdown(result: dict[str, Any]) -> str:
    """IWAE - VAE test NLL at k = 5 and 50 after every scored stage, paired, with its 95%
    interval, the paper's difference and the verdict (Markdown table)."""
    rows = ["| layers | epochs | k | IWAE − VAE (95% interval) | the paper | verdict |",
            "|---|---|---|---|---|---|"]
    for layers in (1, 2):
        for e in stage_epochs(result):
            if ("iwae", layers, 50) not in stage_cells(result, e):
                continue
            rows += [f"| {layers} | {e} | {c['k']} | {_pm(c['diff'], c['se'])} | "
                     f"{c['paper_diff']:+.2f} | {c['verdict']} |"
                     for c in claims(result, layers, e) if c["claim"] == "iwae_beats_vae"]
    return "\n".join(rows)
