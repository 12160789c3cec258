"""The gradient-estimator and power-mean chapters (6 and 7): their tables and checked facts.

Each ``*_facts`` function computes the numbers a chapter's paragraph shows and checks every
claim that paragraph makes (AssertionError naming the claim when the file does not bear it out).
"""

from __future__ import annotations

from ..results import current_keys
from ..studies import check_claim, markdown_table, minutes, paired_difference, provenance_line

__all__ = ["estimator_label", "estimator_rows", "estimator_table", "estimator_facts", "snr_facts",
           "power_of", "power_rows", "power_table", "power_facts",
           "reconstruction_table", "reconstruction_facts", "ESTIMATOR_NAMES",
           "MLMI4_POWER_NLL", "MLMI4_RECONSTRUCTION"]


# ---- chapter 6: gradient estimators ------------------------------------------------------

#: how the estimator chapter names the objectives
ESTIMATOR_NAMES = {"iwae": "IWAE", "vae": "VAE", "stl": "STL", "dreg": "DReG",
                   "miwae": "MIWAE", "ciwae": "CIWAE", "piwae": "PIWAE"}


def estimator_label(objective: str, k: int) -> str:
    """``"miwae:m=5", 10`` -> ``"MIWAE(5, 10)"``; ``"stl", 5`` -> ``"STL k=5"``."""
    from ..objectives import parse_objective

    name, opts = parse_objective(objective)
    shown = ESTIMATOR_NAMES[name]
    if name in ("miwae", "piwae"):
        return f"{shown}({opts['m']}, {k})"
    if name == "ciwae":
        return f"{shown}(beta {opts['beta']:g}), k={k}"
    return f"{shown} k={k}"


def estimator_rows(study: dict) -> list[dict]:
    """The estimator study (``scripts/objectives_study.py --part estimators``), one entry per
    trained model: ``label``, ``samples`` per data point, ``nll`` and ``nll_stderr``, the
    paired difference to the IWAE with the same number of samples (``diff``, ``diff_se``),
    ``active_units`` and ``trainer``."""
    from ..objectives import samples_per_point

    recs = study["configurations"]
    base = {samples_per_point(r["objective"], r["k"]): r for r in recs
            if r["objective"] == "iwae"}
    rows = []
    for r in recs:
        n = samples_per_point(r["objective"], r["k"])
        d, se = paired_difference(r, base[n])
        rows.append({"label": estimator_label(r["objective"], r["k"]), "objective":
                     r["objective"], "k": r["k"], "samples": n, "nll": r["nll"],
                     "nll_stderr": r["nll_stderr"], "diff": d, "diff_se": se,
                     "active_units": r["active_units_total"], "trainer": r["trainer"]})
    return rows


def estimator_table(study: dict) -> str:
    """The estimator study as a Markdown table, with its budget and provenance under it."""
    p = study["protocol"]
    rows = [(r["label"], r["samples"], f"{r['nll']:.2f} ± {r['nll_stderr']:.2f}",
             f"{r['diff']:+.2f} ({r['diff_se']:.2f})", r["active_units"], f"`{r['trainer']}`")
            for r in estimator_rows(study)]
    table = markdown_table(["estimator", "samples", "test NLL", "minus the IWAE's",
                            "active units", "trained by"], rows)
    return (table + f"\n\n{p['args']['epochs']} epochs at batch {p['args']['batch_size']}; "
            f"NLL by L_{p['args']['eval_k']} on {p['eval_subset']}. "
            + provenance_line(study, minutes(study["provenance"]["wall_seconds"]) + " in all"))


def estimator_facts(study: dict) -> dict:
    """The numbers the estimator chapter's text states about the training study, with its
    claims checked: one protocol for every model, equal samples per comparison, every
    alternative ahead of the IWAE with as many samples (beyond two paired standard errors),
    STL ahead of DReG at both k, MIWAE(5, 10) the best with 50 samples and ahead of PIWAE(5, 10)
    with the fewest active units, DReG's k = 50 run slower than STL's."""
    from ..objectives import parse_objective, samples_per_point

    p, recs = study["protocol"], study["configurations"]
    by = {(r["objective"], r["k"]): r for r in recs}
    samples = {samples_per_point(r["objective"], r["k"]) for r in recs}
    check_claim(p["args"]["eval_k"] == 5000 and p["dataset"] == "mnist", "L_5000 on MNIST")
    check_claim(samples == {5, 50}, "5 or 50 samples per data point", samples)
    check_claim(all(samples_per_point(r["objective"], r["k"]) == 50 for r in recs
               if parse_objective(r["objective"])[0] in ("miwae", "piwae")),
           "MIWAE and PIWAE use 50 samples")
    check_claim(len({len(r["nll_per_image"]) for r in recs}) == 1, "the same test images")
    check_claim(all(r["eval_k"] == 5000 and r["epochs"] == p["args"]["epochs"] for r in recs),
           "one budget and one score for all")
    check_claim({r["trainer"] for r in recs} == {"fleet", "train.fit"}, "two trainers")
    rows = estimator_rows(study)
    others = [r for r in rows if r["objective"] != "iwae"]
    check_claim(all(r["diff"] < -2 * r["diff_se"] for r in others),
           "every alternative beats the IWAE with as many samples",
           [(r["label"], round(r["diff"], 2)) for r in others])
    best50 = min((r for r in rows if r["samples"] == 50 and r["objective"] != "iwae"),
                 key=lambda r: r["nll"])
    check_claim(best50["objective"] == "miwae:m=5", "MIWAE(5, 10) is best with 50 samples",
           best50["label"])
    stl_dreg = {k: paired_difference(by["stl", k], by["dreg", k]) for k in (5, 50)}
    check_claim(all(d < -2 * se for d, se in stl_dreg.values()), "STL ahead of DReG", stl_dreg)
    miwae_piwae = paired_difference(by["miwae:m=5", 10], by["piwae:m=5", 10])
    check_claim(miwae_piwae[0] < -2 * miwae_piwae[1], "MIWAE ahead of PIWAE", miwae_piwae)
    au_miwae = by["miwae:m=5", 10]["active_units_total"]
    check_claim(au_miwae == min(r["active_units_total"] for r in recs),
                "MIWAE has the fewest units")
    wt = study["wall_time_s"]
    t_dreg, t_stl = (wt[f"mnist-{o}-k50-1L-s0_all_sessions"] for o in ("dreg", "stl"))
    check_claim(t_dreg > t_stl, "DReG's k = 50 run took longer than STL's", t_dreg, t_stl)
    return {"epochs": p["args"]["epochs"], "batch_size": p["args"]["batch_size"],
            "eval_n": p["args"]["eval_n"], "stl_dreg": stl_dreg, "miwae_piwae": miwae_piwae,
            "au_miwae": au_miwae, "au_iwae50": by["iwae", 50]["active_units_total"],
            "miwae_gain": -paired_difference(by["miwae:m=5", 10], by["iwae", 50])[0],
            "time_dreg_over_stl": t_dreg / t_stl, "rows": rows}


def snr_facts(study: dict) -> dict:
    """The SNR study on the shipped MNIST model (``scripts/snr_study.py``): its curves, noise
    floor and fitted slopes over k >= 10, and the checks of what the chapter states about
    them: every decoder SNR grows with k and the three estimators share it; the IWAE's encoder
    SNR falls; STL's grows; DReG's falls more slowly than the IWAE's and stays above it."""
    from ..snr import NETWORKS, fit_slope, noise_floor

    args = study["protocol"]["args"]
    ks, curves = args["ks"], study["curves"]
    floor = noise_floor(args["repeats"])
    slope = {(o, net): fit_slope(ks, curves[o]["network"][net], 10, floor)
             for o in ("iwae", "stl", "dreg") for net in NETWORKS}
    enc = {o: curves[o]["network"]["encoder"] for o in ("iwae", "stl", "dreg")}
    dec = {o: curves[o]["network"]["decoder"] for o in ("iwae", "stl", "dreg")}
    for o in dec:
        check_claim(dec[o][-1] > dec[o][0] and slope[o, "decoder"] > 0,
                    "the decoder's SNR grows", o)
    check_claim(slope["iwae", "encoder"] < 0 and enc["iwae"][-1] < enc["iwae"][0],
           "the IWAE's encoder SNR falls")
    check_claim(slope["stl", "encoder"] > 0, "STL's encoder SNR grows")
    check_claim(slope["iwae", "encoder"] < slope["dreg", "encoder"] < 0,
           "DReG's encoder SNR falls, more slowly than the IWAE's")
    check_claim(enc["dreg"][-1] > 1.5 * enc["iwae"][-1], "DReG stays above the IWAE at k = 1000")
    check_claim(max(abs(a - b) for a, b in zip(dec["dreg"], dec["iwae"])) < 1e-3 * max(dec["iwae"]),
           "DReG shares the IWAE's decoder gradient")
    return {"ks": ks, "curves": curves, "floor": floor, "slope": slope, "n": args["n"],
            "repeats": args["repeats"],
            "model": current_keys(study["protocol"]["model"]),
            "ratio_dreg": enc["dreg"][-1] / enc["iwae"][-1], "encoder": enc}


# ---- chapter 7: power means ----------------------------------------------------------------

#: MLMI4's test NLLs of the power bound at k = 50 (fixed-binarization MNIST, one layer, single
#: runs; p = 1 is their IWAE), quoted from their poster
MLMI4_POWER_NLL = {0.5: 87.88, 1.0: 87.13, 2.0: 86.75, 3.0: 86.70, 5.0: 86.80}
#: MLMI4's (reconstruction loss, log-likelihood) of the VAE and the IWAE, by (objective, k)
MLMI4_RECONSTRUCTION = {("vae", 1): (71.87, -89.87), ("vae", 5): (72.09, -89.85),
                        ("vae", 50): (74.15, -90.81), ("iwae", 1): (71.87, -89.87),
                        ("iwae", 5): (71.63, -87.61), ("iwae", 50): (78.36, -87.13)}


def power_of(record: dict) -> float:
    """The p of a power-bound record: 0 for the VAE, 1 for the IWAE."""
    from ..objectives import parse_objective

    name, opts = parse_objective(record["objective"])
    return {"vae": 0.0, "iwae": 1.0}.get(name, opts.get("p"))


def power_rows(study: dict) -> list[dict]:
    """The k = 50 models of the power study (``scripts/objectives_study.py --part power``) in
    order of p: ``p``, ``nll``, ``nll_stderr``, the paired difference to the IWAE (``diff``,
    ``diff_se``) and ``active_units``."""
    at50 = sorted((r for r in study["configurations"] if r["k"] == 50), key=power_of)
    iwae = next(r for r in at50 if power_of(r) == 1.0)
    out = []
    for r in at50:
        d, se = paired_difference(r, iwae)
        out.append({"p": power_of(r), "nll": r["nll"], "nll_stderr": r["nll_stderr"],
                    "diff": d, "diff_se": se, "active_units": r["active_units_total"]})
    return out


def power_table(study: dict) -> str:
    """The power study at k = 50 as a Markdown table next to MLMI4's numbers, with its budget
    and provenance under it."""
    p = study["protocol"]

    def name(v: float) -> str:
        return f"{v:g}" + {0.0: " (VAE)", 1.0: " (IWAE)"}.get(v, "")

    rows = [(name(r["p"]), f"{r['nll']:.2f} ± {r['nll_stderr']:.2f}",
             f"{r['diff']:+.2f} ({r['diff_se']:.2f})", r["active_units"],
             f"{MLMI4_POWER_NLL[r['p']]:.2f}" if r["p"] in MLMI4_POWER_NLL else "")
            for r in power_rows(study)]
    table = markdown_table(["p", "test NLL (ours)", "minus the IWAE's", "active units",
                            "MLMI4's NLL"], rows)
    return (table + f"\n\n{p['args']['epochs']} epochs at batch {p['args']['batch_size']} on "
            f"{p['dataset']}; NLL by L_{p['args']['eval_k']} on {p['eval_subset']}. "
            + provenance_line(study, minutes(study["wall_time_s"]["fleet_all_sessions"])
                              + " of training"))


def power_facts(study: dict, batch_study: dict) -> dict:
    """The numbers the power-mean chapter states about its training study, with its claims
    checked: one model per p in {0, 0.5, 1, 2, 3, 5} at k = 50 on the same images, p = 0.5 the
    best, every p > 1 worse than the IWAE beyond two paired standard errors and the more so the
    larger p. ``batch_study``: the batch-size study, for the seed-to-seed spread at batch 20."""
    p = study["protocol"]
    check_claim(p["args"]["eval_k"] == 5000 and p["dataset"] == "binarized-mnist",
           "L_5000 on fixed-binarization MNIST")
    check_claim("evenly spaced" in p["eval_subset"], "test images evenly spaced through the split")
    rows = power_rows(study)
    ours = {r["p"]: (r["diff"], r["diff_se"]) for r in rows}
    check_claim(sorted(ours) == [0.0, 0.5, 1.0, 2.0, 3.0, 5.0], "one model per p", sorted(ours))
    check_claim(ours[1.0] == (0.0, 0.0), "the IWAE is p = 1")
    check_claim(all(80 < r["nll"] < 120 for r in rows), "NLLs in a sane range")
    check_claim(len({len(r["nll_per_image"]) for r in study["configurations"]}) == 1,
           "the same test images")

    def significant(d: float, se: float) -> bool:
        return abs(d) > 2 * se

    best_p = min(rows, key=lambda r: r["nll"])["p"]
    better = [v for v in ours if v > 1 and ours[v][0] < 0 and significant(*ours[v])]
    worse = [v for v in ours if v > 1 and ours[v][0] > 0 and significant(*ours[v])]
    check_claim(best_p == 0.5, "p = 0.5 has the lowest NLL", best_p)
    check_claim(better == [] and worse == [2.0, 3.0, 5.0], "every p > 1 is worse than the IWAE",
           better, worse)
    check_claim(ours[2.0][0] < ours[3.0][0] < ours[5.0][0], "worse the larger p")
    nlls: dict[tuple, list[float]] = {}
    for c in batch_study["by_batch"]["20"]["configurations"]:
        nlls.setdefault((c["objective"], c["k"]), []).append(c["nll"])
    spreads = [max(v) - min(v) for v in nlls.values()]
    gains = [MLMI4_POWER_NLL[1.0] - MLMI4_POWER_NLL[v] for v in (2.0, 3.0, 5.0)]
    return {"epochs": p["args"]["epochs"], "batch_size": p["args"]["batch_size"],
            "lr_scale": p["lr_scale"], "eval_n": p["args"]["eval_n"], "rows": rows,
            "ps": sorted(ours), "diff": ours, "best_p": best_p, "better": better,
            "worse": worse, "seed_spread": (min(spreads), max(spreads)),
            "seed_spread_epochs": batch_study["protocol"]["args"]["epochs"],
            "mlmi4_gain": (min(gains), max(gains))}


def _by_objective_k(study: dict) -> dict:
    from ..objectives import parse_objective

    by = {(parse_objective(r["objective"])[0], r["k"]): r for r in study["configurations"]
          if r["objective"] in ("vae", "iwae")}
    by["vae", 1] = by["iwae", 1]  # k = 1: the same model (one run serves both rows)
    return by


def reconstruction_table(study: dict) -> str:
    """The VAE's and the IWAE's reconstruction loss and log-likelihood at k = 1, 5, 50 next to
    MLMI4's, as a Markdown table."""
    by = _by_objective_k(study)
    rows = [(o.upper(), k, f"{by[o, k]['reconstruction_loss']:.2f}", f"{-by[o, k]['nll']:.2f}",
             f"{rec:.2f}", f"{ll:.2f}") for (o, k), (rec, ll) in MLMI4_RECONSTRUCTION.items()]
    r = by["iwae", 50]
    return (markdown_table(["model", "k", "reconstruction loss (ours)", "log-likelihood (ours)",
                            "reconstruction loss (MLMI4)", "log-likelihood (MLMI4)"], rows)
            + f"\n\nOurs: nats per image, on {r['eval_subset']}; the reconstruction loss "
            f"averaged over {r['reconstruction_samples']} draws of h per image. The k = 1 VAE "
            "and IWAE are one model.")


def reconstruction_facts(study: dict) -> dict:
    """What the chapter states about reconstruction against likelihood, checked: at k = 50 the
    IWAE reconstructs worse than the VAE and has the higher log-likelihood (ours and MLMI4's);
    the IWAE's reconstruction loss grows with k; it keeps more active units at k = 50."""
    by = _by_objective_k(study)
    rec = {key: by[key]["reconstruction_loss"] for key in MLMI4_RECONSTRUCTION}
    ll = {key: -by[key]["nll"] for key in MLMI4_RECONSTRUCTION}
    au = {key: by[key]["active_units_total"] for key in MLMI4_RECONSTRUCTION}
    theirs = MLMI4_RECONSTRUCTION
    check_claim(rec["iwae", 50] > rec["vae", 50] and ll["iwae", 50] > ll["vae", 50],
           "at k = 50 the IWAE reconstructs worse and has the higher likelihood")
    check_claim(theirs["iwae", 50][0] > theirs["vae", 50][0]
           and theirs["iwae", 50][1] > theirs["vae", 50][1], "MLMI4's pattern")
    check_claim(rec["iwae", 5] > rec["vae", 5], "the IWAE reconstructs worse at k = 5")
    check_claim(rec["iwae", 1] < rec["iwae", 5] < rec["iwae", 50], "the IWAE's loss grows with k")
    check_claim(rec["iwae", 50] - rec["vae", 50] > theirs["iwae", 50][0] - theirs["vae", 50][0],
           "the pattern is stronger in ours than in MLMI4's")
    check_claim(au["iwae", 50] > au["vae", 50], "the IWAE keeps more units at k = 50")
    return {"samples": study["configurations"][0]["reconstruction_samples"], "rec": rec,
            "ll": ll, "au": au, "rec_gap50": rec["iwae", 50] - rec["vae", 50],
            "ll_gap50": ll["iwae", 50] - ll["vae", 50],
            "rec_gap50_mlmi4": theirs["iwae", 50][0] - theirs["vae", 50][0],
            "rec_iwae_mlmi4": [theirs["iwae", k][0] for k in (1, 5, 50)]}
