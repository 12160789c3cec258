"""The random-weights chapter (8): its table, summary and checked facts.

Each ``*_facts`` function computes the numbers a chapter's paragraph shows and checks every
claim that paragraph makes (AssertionError naming the claim when the file does not bear it out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..studies import check_claim, markdown_table, minutes, paired_difference, provenance_line

__all__ = ["random_weights_summary", "random_weights_table", "random_weights_facts",
           "SEED_PAPER_RANDOM_WEIGHTS", "SEED_PAPER_EPOCHS"]


# ---- chapter 8: random network weights --------------------------------------------------

#: the seed paper's test log-likelihoods on MNIST (mean ± standard error over 5 trials, 500
#: epochs), quoted from it
SEED_PAPER_RANDOM_WEIGHTS = {"IWAE": (-95.182, 0.022), "IWAER": (-94.346, 0.025),
                             "IWAERrec": (-94.709, 0.025)}
#: the seed paper's number of epochs
SEED_PAPER_EPOCHS = 500


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = torch.tensor(list(values), dtype=torch.float64)
    return float(v.mean()), (float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan"))


def random_weights_summary(study: dict) -> dict:
    """The random-weights study (``scripts/random_weights_study.py``) by method: ``methods``
    (IWAE, IWAERrec, IWAER), ``seeds``, ``by`` (method -> records), ``stats`` (method -> mean
    and standard error over trials of the test log-likelihood), ``per_seed`` (method -> the
    paired gain over the IWAE of the same seed, (mean, standard error) per seed) and
    ``spread`` (method -> the standard deviation over trials)."""
    from ..random_weights import RANDOM

    methods = list(RANDOM.values())
    models = study["models"]
    by = {m: [r for r in models if r["method"] == m] for m in methods}
    seeds = sorted({r["seed"] for r in models})

    def of(m: str, s: int) -> dict:
        return next(r for r in by[m] if r["seed"] == s)

    return {"methods": methods, "seeds": seeds, "by": by,
            "stats": {m: _mean_se([-r["nll"] for r in by[m]]) for m in methods},
            "per_seed": {m: [paired_difference(of("IWAE", s), of(m, s)) for s in seeds]
                         for m in ("IWAERrec", "IWAER")},
            "spread": {m: float(np.std([-r["nll"] for r in by[m]], ddof=1)) for m in methods}}


def random_weights_table(study: dict) -> str:
    """The random-weights study as a Markdown table next to the seed paper's numbers, with its
    budget and provenance under it."""
    s, p = random_weights_summary(study), study["protocol"]
    rows = [(m, f"{s['stats'][m][0]:.2f} ± {s['stats'][m][1]:.2f}", len(s["by"][m]),
             ", ".join(f"{-r['nll']:.2f}" for r in s["by"][m]),
             "{:.3f} ± {:.3f}".format(*SEED_PAPER_RANDOM_WEIGHTS[m])) for m in s["methods"]]
    table = markdown_table(["method", "test LL, ours (mean ± s.e. over trials)", "trials",
                            "per trial", f"seed paper ({SEED_PAPER_EPOCHS} epochs, 5 trials)"],
                           rows)
    return (table + f"\n\n{p['args']['epochs']} epochs, batch {p['batch_size']}, k = {p['k']}, "
            f"layers {p['layers']}; {p['eval']}. "
            + provenance_line(study, minutes(study["provenance"]["wall_seconds"]) + " in all"))


def random_weights_facts(study: dict) -> dict:
    """The numbers the random-weights chapter states about its study, with its claims checked:
    the seed paper's architecture, batch and k; at least three trials per method; the three
    methods within half a nat of each other; IWAER behind the IWAE in every trial's paired
    comparison, each time by less than two standard errors; and the learned standard
    deviations still close to where they started (every layer's median within a factor 1.25,
    90% of all of them within a factor 2)."""
    p = study["protocol"]
    s = random_weights_summary(study)
    check_claim(p["k"] == 25 and p["batch_size"] == 100 and p["layers"] == [[400, 20]],
           "the seed paper's architecture, batch and k")
    check_claim(all(len(s["by"][m]) == len(s["seeds"]) >= 3 for m in s["methods"]),
           "three trials or more per method")
    mean_gain = {m: float(np.mean([g[0] for g in v])) for m, v in s["per_seed"].items()}
    best_gain = max(abs(v) for v in mean_gain.values())
    check_claim(best_gain < 0.5, "the methods are within a fraction of a nat", mean_gain)
    d_iwaer = s["stats"]["IWAER"][0] - s["stats"]["IWAE"][0]
    gains = s["per_seed"]["IWAER"]
    check_claim(d_iwaer < 0 and all(g[0] < 0 for g in gains), "IWAER behind in every trial", gains)
    check_claim(all(abs(g[0]) < 2 * g[1] for g in gains), "each by less than two s.e.", gains)
    init = float(np.exp(p["init_log_std"]))
    layers = [v for r in study["models"] for v in r["weight_stds"].values()]
    medians = [v["quantiles_5_25_50_75_95"][2] for v in layers]
    q05 = min(v["quantiles_5_25_50_75_95"][0] for v in layers)
    q95 = max(v["quantiles_5_25_50_75_95"][4] for v in layers)
    check_claim(all(0.8 * init < m < 1.25 * init for m in medians), "the medians hardly moved")
    check_claim(q05 > 0.5 * init and q95 < 2 * init, "90% within a factor 2 of the start", q05, q95)
    epochs = s["by"]["IWAER"][0]["epochs"]
    steps = epochs * p["n_train"] // p["batch_size"]
    return {"epochs": p["args"]["epochs"], "trials": len(s["seeds"]),
            "init_log_std": p["init_log_std"], "init_std": init, "eval_n": p["args"]["eval_n"],
            "best_gain": best_gain, "spread_max": max(s["spread"].values()),
            "iwaer_gap": -d_iwaer, "q05": q05, "q95": q95, "steps": steps,
            "max_move": 1e-3 * steps, "max_factor": float(np.exp(1e-3 * steps)),
            "seed_paper_gain": (SEED_PAPER_RANDOM_WEIGHTS["IWAER"][0]
                                - SEED_PAPER_RANDOM_WEIGHTS["IWAE"][0]),
            "summary": s}
