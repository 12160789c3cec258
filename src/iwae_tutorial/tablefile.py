"""The stage-wise result file of :func:`iwae_tutorial.reproduce.reproduce`: every scored stage's
cells (the one result schema, :func:`iwae_tutorial.results.model_record`, with per-image
log-likelihoods), the furthest stage of every cell as ``configurations``, the protocol and the
provenance.

``run`` and ``part`` below are :class:`iwae_tutorial.reproduce.Run` and
:class:`~iwae_tutorial.reproduce.Part`; ``done`` maps :func:`stage_key` to a scored stage.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .budgets import FAST_MOMENTS
from .paper import PAPER_EPOCHS
from .schedule import lr_scale_for_batch

__all__ = ["records", "result_file", "stage_index", "stage_key", "now_utc"]


def stage_key(part: Any, epochs: int) -> str:
    return f"{part.name}@{epochs}"


def now_utc() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def records(run: Any, part: Any, entry: dict, with_per_image: bool) -> list[dict]:
    """The cells of ``part`` at one scored stage, in the one schema (trained members and
    their aliases), in the paper's order."""
    from dataclasses import replace

    from .evaluate import ACTIVE_UNITS_THRESHOLD, eval_subset_text
    from .results import model_record, pack_per_image, slim_record

    ds = run.ds
    epochs = entry["epochs"]
    out = {}
    cells = [(c, i, None) for i, c in enumerate(part.configs)]
    cells += [(c, twin, part.configs[twin].name) for c, twin in part.aliases.values()]
    for cfg, i, twin_name in cells:
        ll = entry["ll"][i]
        nll = -ll
        n = int(nll.shape[0])
        evaluation = {
            "nll": float(nll.mean()), "nll_stderr": float(nll.std() / n ** 0.5),
            "eval_k": run.eval_k, "eval_n": n, "eval_n_total": int(ds.x_test.shape[0]),
            "eval_subset": eval_subset_text(ds, run.n_eval), "eval_seed": run.eval_seed,
            "test_binarization": (f"one fixed Bernoulli draw (CPU generator seed "
                                  f"{run.eval_seed})" if ds.binarize else "none"),
            "active_units": entry["active_units"][i],
            "active_units_total": int(sum(entry["active_units"][i])),
            "active_units_variances": entry["active_units_variances"][i],
            "active_units_n": entry["active_units_n"],
            "active_units_threshold": ACTIVE_UNITS_THRESHOLD,
        }
        own = ({k: v[i] for k, v in entry["by_member"].items()} if "by_member" in entry
               else entry)  # several ranks: the values of the member's rank
        extra: dict[str, Any] = {"wall_time_s": own["seconds"], "gemm": own.get("gemm"),
                                 "run_dir": str(Path(own["weights"]) / part.configs[i].name)}
        diverged = [h for h in entry["histories"][i][:epochs] if h.get("frozen")]
        if diverged:  # fast.fit_fast froze it: these are its weights before that epoch
            e0 = int(diverged[0]["diverged_in_epoch"])
            extra["frozen"] = {"diverged_in_epoch": e0, "weights_of_epoch": e0 - 1,
                               "note": "diverged (NaN/inf) and frozen; scored at the weights "
                                       f"after epoch {e0 - 1}, not {epochs}"}
        if twin_name is not None:
            extra["trained_as"] = twin_name
            extra["note"] = ("at k = 1 the IWAE bound is the ELBO: this cell is the VAE k = 1 "
                             "model, trained once")
        if with_per_image:
            extra["ll_per_image"] = pack_per_image(ll.tolist())
        rec = model_record(replace(cfg, epochs=epochs), run.dataset,
                           entry["histories"][i][:epochs], evaluation, **extra)
        out[rec["name"]] = slim_record(rec) if with_per_image else rec
    from .results import table1_order

    return [out[name] for name in table1_order(list(out.values()))]


def result_file(run: Any, parts: list[Any], done: dict, t_start: float) -> dict[str, Any]:
    """The table file: the protocol, the scored stages (each with its cells, per-image
    log-likelihoods and provenance), the furthest stage of every cell as ``configurations``
    (the one result schema, :func:`iwae_tutorial.results.model_record`), and provenance."""
    import torch

    from .schedule import burda_schedule, truncate_schedule

    ds = run.ds
    stages = []
    for e in sorted({e for p in parts for e in p.ends}):
        cells, seconds, provs = [], {}, {}
        for part in parts:
            entry = done.get(stage_key(part, e))
            if entry is None:
                continue
            cells += records(run, part, entry, with_per_image=True)
            seconds[part.name] = entry["seconds"]
            provs[part.name] = entry["provenance"]
        if cells:
            lr = truncate_schedule(burda_schedule(), e)[-1].lr * lr_scale_for_batch(
                run.batch_size)
            stages.append({"epochs": e, "stage": stage_index(e), "lr": lr,
                           "configurations": cells, "wall_time_s": seconds,
                           "provenance": provs})
    furthest = {}
    for part in parts:
        scored = [e for e in part.ends if stage_key(part, e) in done]
        if scored:
            for rec in records(run, part, done[stage_key(part, scored[-1])],
                                with_per_image=False):
                furthest[rec["name"]] = rec
    from .results import table1_order

    configurations = [furthest[n] for n in table1_order(list(furthest.values()))]
    complete = all(stage_key(p, e) in done for p in parts for e in p.ends)
    schedule = truncate_schedule(burda_schedule(), run.budget.epochs)
    train_s = {p.name: float(sum(done[stage_key(p, e)]["seconds"]["train"]
                                 for e in p.ends if stage_key(p, e) in done)) for p in parts}
    eval_s = {p.name: float(sum(done[stage_key(p, e)]["seconds"]["eval_nll"]
                                for e in p.ends if stage_key(p, e) in done)) for p in parts}
    n_test_total = int(ds.x_test.shape[0])
    from .evaluate import eval_subset_text

    return {
        "dataset": run.dataset,
        "budget": run.budget.name,
        "status": "complete" if complete else "partial",
        "protocol": {
            "budget_definition": run.budget.description,
            "is_paper_protocol": run.is_paper_protocol,
            "n_train": run.n_train,
            "n_train_total": int(ds.x_train.shape[0]),
            "epochs": run.budget.epochs,
            "epochs_by_layers": {p.name: p.epochs for p in parts},
            "stage_ends": {p.name: p.ends for p in parts},
            "paper_epochs": PAPER_EPOCHS,
            "schedule": [asdict(s) for s in schedule],
            "batch_size": run.batch_size,
            "lr_scale": lr_scale_for_batch(run.batch_size),
            "trainer": run.trainer,
            "noise": {"exact": "each member's own torch.Generator, as train.fit (exact)",
                      "fast": "counter-based, a hash of (seed, step) (iwae_tutorial.fleet.noise)",
                      "fast-device": "the device's generator (torch.rand/randn), shared by "
                                     "the members of a fleet"}[run.trainer],
            "precision": ("training: TF32 matrix products; evaluation: float32" if run.tf32
                          else "float32"),
            "saved_state": (f"Adam moments saved in {FAST_MOMENTS} (resumption not "
                            "bit-for-bit)"
                            if run.trainer != "exact" else "exact (float32)"),
            "name": run.tag,
            "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-4)",
            "binarization": "dynamic (fresh Bernoulli draw per use)" if ds.binarize
                            else "none",
            "eval_k": run.eval_k, "eval_n": run.n_eval, "eval_n_total": n_test_total,
            "eval_subset": eval_subset_text(ds, run.n_eval), "eval_seed": run.eval_seed,
            "eval_noise": "torch.Generator seeded stream_seed(eval_seed, 'eval-noise') per "
                          "model",
            "test_binarization": (f"one fixed Bernoulli draw (CPU generator seed "
                                  f"{run.eval_seed})" if ds.binarize else "none"),
            "per_image": "ll_per_image: base64 of little-endian int32 millinats of each test "
                         "image's L_k, in the order of eval_subset "
                         "(iwae_tutorial.results.unpack_per_image)",
            "k1_iwae": "trained once: at k = 1 the IWAE is the VAE (trained_as)",
            "active_units": {"n": 500, "threshold": 0.01,
                             "data": f"the first 500 training images, binarized once "
                                     f"(seed {run.eval_seed + 1}); layer 2 conditioned on one "
                                     "sample of layer 1"},
            "seed": run.seed,
        },
        "stages": stages,
        "configurations": configurations,
        "wall_time_s": {"train": train_s, "eval_nll": eval_s,
                        "note": "per fleet (1L, 2L): the members of a fleet train and are "
                                "evaluated together; summed over the scored stages",
                        "this_invocation": time.perf_counter() - t_start},
        "trainer": {"module": "iwae_tutorial.fleet" if run.trainer == "exact"
                    else "iwae_tutorial.fleet.fast", "gemm": run.gemm,
                    "cuda_graph": run.device.type == "cuda",
                    "torch_threads": torch.get_num_threads(),
                    **({"ranks": run.world} if run.world > 1 else {})},
        "provenance": {**run.started, "date_utc": now_utc(),
                       "wall_seconds": round(time.perf_counter() - t_start, 3)},
    }


def stage_index(epochs: int) -> int | None:
    """0-based index of the paper's stage that ends after ``epochs`` epochs, else None."""
    from .schedule import burda_schedule, stage_ends

    ends = stage_ends(burda_schedule())
    return ends.index(epochs) if epochs in ends else None
