"""Studies beyond Table 1: train a set of configurations (a fleet where the objectives are
functions of the log-weights, ``train.fit`` for the others) and score them all the book's way.

:func:`score_models` is the one scoring protocol of every study result file: test NLL by L_k
(default 5000) on the first ``n`` test images binarized once (seed 0), the paper's active-unit
count and the reconstruction loss -log p(x | h), h ~ q(h | x), on the same images.

The second half reads the committed result files for the chapters (:func:`load_study`): their
tables as Markdown with a one-line provenance under them, and the facts each chapter's text
states, checked (``*_facts``: an AssertionError names a claim the file does not bear out).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .data import Dataset
from .evaluate import (
    ACTIVE_UNITS_THRESHOLD,
    eval_subset_text,
    log_likelihood_many,
    paper_active_units,
    reconstruction_loss,
)
from .fleet.stacked import tune_malloc
from .models import IWAE
from .results import evaluation_fields, model_record
from .runs import RunConfig

__all__ = ["score_models", "RECON_SAMPLES", "start", "finished_parts", "paired_difference",
           "earlier_provenance", "RUN_ARGUMENTS", "add_run_arguments", "protocol_args",
           "load_study", "current_layout", "markdown_table", "as_markdown", "minutes",
           "provenance_line", "check_claim"]

#: samples of h per image in the reconstruction loss
RECON_SAMPLES = 10


def score_models(models: Sequence[IWAE], cfgs: Sequence[RunConfig], ds: Dataset,
                 x_eval: torch.Tensor, histories: Sequence[list[dict]], *,
                 eval_k: int = 5000, progress: bool = False, **extra) -> list[dict]:
    """One result record per model (:func:`~iwae_tutorial.results.model_record`) with the
    evaluation fields, ``reconstruction_loss`` (mean over images, nats) and its standard
    error, and the per-image NLL (``nll_per_image``, for paired comparisons on the same images).

    x_eval: [n, x_dim], the scored test images (:func:`~iwae_tutorial.evaluate.eval_images`).
    """
    gens = [torch.Generator().manual_seed(0) for _ in models]
    ll = log_likelihood_many(models, x_eval, eval_k, generators=gens, progress=progress)
    records = []
    for model, cfg, hist, ll_i in zip(models, cfgs, histories, ll):
        au, n_au = paper_active_units(model, ds.x_train, ds.binarize, 0)
        ev = evaluation_fields(ll_i, k=eval_k, n_total=ds.x_test.shape[0], seed=0,
                               binarized=ds.binarize, active_units=au, active_units_n=n_au,
                               threshold=ACTIVE_UNITS_THRESHOLD,
                               subset=eval_subset_text(ds, x_eval.shape[0]))
        rec = reconstruction_loss(model, x_eval, RECON_SAMPLES,
                                  generator=torch.Generator(model.device).manual_seed(1))
        ev.update(reconstruction_loss=float(rec.mean()),
                  reconstruction_loss_stderr=float(rec.std() / rec.numel() ** 0.5),
                  reconstruction_samples=RECON_SAMPLES,
                  nll_per_image=[round(-v, 4) for v in ll_i.tolist()])
        records.append(model_record(cfg, ds.name, hist, ev, **extra))
    return records


def earlier_provenance(out: str | Path) -> list[dict]:
    """The provenance of the invocations that wrote the parts of ``out`` a resumed study keeps:
    the existing file's ``provenance`` after its own ``earlier_provenance`` (oldest first);
    empty when there is no file. Store it as ``earlier_provenance`` next to the new one."""
    out = Path(out)
    if not out.exists():
        return []
    old = json.loads(out.read_text())
    return [*old.get("earlier_provenance", []),
            *([old["provenance"]] if "provenance" in old else [])]


def paired_difference(a: dict, b: dict) -> tuple[float, float]:
    """Record ``a``'s test NLL minus record ``b``'s, paired image by image: the mean of the
    differences of ``nll_per_image`` and its standard error (nats). Paired, the error is that
    of the difference, far smaller than either NLL's own when the two models find the same
    images hard.

    a, b: result records scored on the same images -> (mean, standard error)
    """
    da, db = a.get("nll_per_image"), b.get("nll_per_image")
    if da is None or db is None or len(da) != len(db):
        raise ValueError(f"{a.get('name')} and {b.get('name')} were not scored on the same "
                         "images (nll_per_image missing or of different lengths)")
    d = torch.tensor(da, dtype=torch.float64) - torch.tensor(db, dtype=torch.float64)
    return float(d.mean()), float(d.std() / len(d) ** 0.5)


#: a study script's arguments that say where and how it runs, not what it computes
RUN_ARGUMENTS = ("threads", "run_root", "out")


def add_run_arguments(p: argparse.ArgumentParser, run_root: str | Path | None,
                      out: str | Path | None) -> None:
    """Add ``--threads``, ``--run-root`` and ``--out`` (with these defaults) to a study's
    parser: the arguments :func:`protocol_args` leaves out of the protocol."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--run-root", default=None if run_root is None else str(run_root),
                   help="where the resumable state goes")
    p.add_argument("--out", default=None if out is None else str(out), help="the result file")


def protocol_args(args: argparse.Namespace, *also: str) -> dict:
    """What a study computes, as its parsed arguments without :data:`RUN_ARGUMENTS` (and
    ``also``): the key under which :func:`finished_parts` finds a finished part again."""
    return {k: v for k, v in vars(args).items() if k not in (*RUN_ARGUMENTS, *also)}


def start(threads: int | None) -> float:
    """A study script's start: ``threads`` CPU threads (when given), the allocator tuned for
    the stacked kernels; returns the start time (``time.perf_counter``)."""
    if threads:
        torch.set_num_threads(threads)
    tune_malloc()
    return time.perf_counter()


def finished_parts(out: str | Path, protocol: dict, key: str) -> dict:
    """What a resumable study already wrote to ``out``: its ``key`` section when the file
    exists and was written with the same arguments (``protocol["args"]``), else nothing."""
    out = Path(out)
    if not out.exists():
        return {}
    old = json.loads(out.read_text())
    return old.get(key, {}) if old.get("protocol", {}).get("args") == protocol else {}


# ------------------------------------------------------------------------------------------
# Reading the committed result files for the chapters: tables, captions and the facts their
# text states. A ``*_facts`` function computes the numbers a chapter's paragraph shows and
# checks every claim that paragraph makes about them (AssertionError naming the claim when the
# file does not bear it out), so the chapter's hidden cells are a few calls.
# ------------------------------------------------------------------------------------------

#: study files written before the one layout kept these arguments flat in ``protocol``
_FLAT_ARGUMENTS = {"batch-size-study": ("epochs", "seeds", "ks", "eval_k", "eval_n"),
                   "estimator-bias": ("result", "epochs", "k", "k_big", "n"),
                   "one-epoch-lr": ("k",)}


def current_layout(study: dict, name: str) -> dict:
    """``study`` (the file ``name.json``) in the one layout of study files: the script's
    arguments in ``protocol["args"]``, what follows from them beside it. Files written before
    it (their arguments flat in ``protocol``) are read through here, the one place that knows
    the old layout; the file itself is left as it is."""
    protocol = study.get("protocol")
    if not isinstance(protocol, dict) or "args" in protocol or name not in _FLAT_ARGUMENTS:
        return study
    flat = _FLAT_ARGUMENTS[name]
    args = {k: protocol[k] for k in flat if k in protocol}
    rest = {k: v for k, v in protocol.items() if k not in flat}
    return {**study, "protocol": {"args": args, **rest}}


def load_study(name: str, results_dir: str | Path | None = None) -> dict:
    """The committed result file ``name.json`` (``results.published_dir()`` by default), in
    the one layout (:func:`current_layout`)."""
    from .results import published_dir

    where = Path(results_dir) if results_dir is not None else published_dir()
    if where is None:
        raise FileNotFoundError("no committed result files found (results/ or the package's "
                                "published/)")
    path = where / f"{name}.json"
    try:
        return current_layout(json.loads(path.read_text()), name)
    except (OSError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"cannot read the result file {path}: {e}") from e


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: one header row, then one row per entry of ``rows``."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def as_markdown(*parts: str) -> Any:
    """Parts of Markdown (tables, captions) as one IPython ``Markdown`` output, a blank line
    between parts: what a chapter's cell shows as its result."""
    from IPython.display import Markdown

    return Markdown("\n\n".join(p.strip("\n") for p in parts if p))


def minutes(seconds: float) -> str:
    """Wall time in words: "42 min", or "3.2 h" from two hours on."""
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min"


def provenance_line(study: dict, time_text: str | None = None) -> str:
    """Who wrote a result file, in one line: the command, the commit, the machine and the date
    (and ``time_text``, how long it took), e.g. for a caption under a table."""
    prov = study["provenance"]
    cmd = prov.get("command") or "?"
    cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
    commit = str(prov.get("git_commit") or "?")[:7] + (" with local changes"
                                                       if prov.get("git_dirty") else "")
    where = prov.get("device_name") or prov.get("device") or "?"
    if prov.get("device") == "cpu" and prov.get("torch_threads"):
        n = prov["torch_threads"]
        where += f", {n} CPU thread{'s' * (n > 1)}"
    text = f"Written by `{cmd}` (commit {commit}; {where}; {str(prov.get('date_utc'))[:10]})"
    return text + (f", {time_text}." if time_text else ".")


def check_claim(holds: bool, claim: str, *detail: Any) -> None:
    """Raise AssertionError naming a chapter's claim when the numbers do not bear it out."""
    if not holds:
        raise AssertionError(f"the chapter's claim does not hold: {claim}"
                             + (f" ({', '.join(map(str, detail))})" if detail else ""))
