"""The anomaly-score chapter (9): AUROC table, rankings, near-blank images, checked facts.

Each ``*_facts`` function computes the numbers a chapter's paragraph shows and checks every
claim that paragraph makes (AssertionError naming the claim when the file does not bear it out).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..studies import check_claim, markdown_table, minutes, provenance_line

__all__ = ["auroc_table", "dot_patterns", "blob_counts", "near_blank", "anomaly_rankings",
           "anomaly_facts", "ANOMALY_SETUPS", "LIKELIHOOD_SCORES"]


# ---- chapter 9: anomaly scores -----------------------------------------------------------

#: the anomaly study's set-ups, in words
ANOMALY_SETUPS = {"heldout": "held-out digit", "omniglot": "Omniglot vs MNIST"}
#: the scores that measure the likelihood of the image (not only of its code)
LIKELIHOOD_SCORES = ("s_vae", "s_vae_reconst", "s_iwae", "s_iwae_reconst")


def auroc_table(study: dict) -> str:
    """The anomaly study (``scripts/anomaly_study.py``): AUROC of every score, model and
    set-up as a Markdown table (each row's best in bold), with its budget and provenance."""
    from ..anomaly import SCORES

    rows = []
    for name, s in study["setups"].items():
        for mo in s["models"]:
            best = max(mo["auroc"].values())
            rows.append([ANOMALY_SETUPS[name], f"{mo['objective'].upper()} k={mo['k']}"] + [
                f"**{mo['auroc'][sc]:.3f}**" if mo["auroc"][sc] == best
                else f"{mo['auroc'][sc]:.3f}" for sc in SCORES])
    a = study["protocol"]["args"]
    held = study["setups"]["heldout"]
    train = sum(s["wall_time_s"]["train_all_sessions"] for s in study["setups"].values())
    return (markdown_table(["set-up", "model", *SCORES], rows)
            + f"\n\nHeld-out digit: {a['held_out']} ({held['n_anomalous']:,} test images, all "
            f"used, against {held['n_normal']:,} of the other digits); Omniglot: "
            f"{study['setups']['omniglot']['n_anomalous']:,} characters against "
            f"{study['setups']['omniglot']['n_normal']:,} MNIST digits. Models trained for "
            f"{a['epochs']} epochs at batch {a['batch_size']}; scores with L = {a['L']}. "
            + provenance_line(study, minutes(train) + " of training for the two fleets"))


def dot_patterns(x: Any, threshold: float = 0.5, max_dot: int = 6, max_dots: int = 6) -> Any:
    """Which images are only dots: between one and ``max_dots`` blobs (pixels above
    ``threshold``, 8-connected) of at most ``max_dot`` pixels each, as the drawings of
    Omniglot's Braille alphabet are at 28x28. x: [n, 784] -> bool numpy array [n]."""
    from scipy import ndimage

    x = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    out = np.zeros(len(x), dtype=bool)
    for i, im in enumerate(x):
        lab, n = ndimage.label(im.reshape(28, 28) > threshold, structure=np.ones((3, 3)))
        if 1 <= n <= max_dots:
            out[i] = np.bincount(lab.ravel())[1:].max() <= max_dot
    return out


def blob_counts(x: Any, threshold: float = 0.5) -> Any:
    """How many separate blobs (pixels above ``threshold``, 8-connected) each image has.
    x: [n, 784] -> int numpy array [n]."""
    from scipy import ndimage

    x = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    return np.array([ndimage.label(im.reshape(28, 28) > threshold, structure=np.ones((3, 3)))[1]
                     for im in x], dtype=int)


def near_blank(x: Any, max_on: int = 10, threshold: float = 0.5) -> Any:
    """Which images have fewer than ``max_on`` pixels above ``threshold``.
    x: [n, 784] -> bool numpy array [n]."""
    x = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    return (x > threshold).sum(1) < max_on


def anomaly_rankings(study: dict, n: int = 8) -> dict:
    """For each set-up of the anomaly study, the ``n`` images the IWAE (k = 50) scores most and
    least unusual by s_iwae, pooled over the normal and the anomalous images (rebuilt as the
    study scored them: ``anomaly.setups``, ``anomaly.scored_images``).

    -> {set-up: {"most"/"least": {"images": [n, 784], "scores": [n], "anomalous": [n] bool},
    "normal_ink": mean pixels on of a normal image}}"""
    from ..anomaly import scored_images, setups

    pools = setups(study["protocol"]["args"]["held_out"])
    out = {}
    for name, s in study["setups"].items():
        xn = scored_images(pools[name].normal, s["n_normal"], anomalous=False)
        xa = scored_images(pools[name].anomalous, s["n_anomalous"], anomalous=True)
        mo = next(m for m in s["models"] if m["objective"] == "iwae" and m["k"] == 50)
        scores = np.r_[mo["scores_normal"]["s_iwae"], mo["scores_anomalous"]["s_iwae"]]
        images = torch.cat([xn, xa]).numpy()
        anomalous = np.r_[np.zeros(len(xn), bool), np.ones(len(xa), bool)]
        order = np.argsort(scores)
        out[name] = {which: {"images": images[idx], "scores": scores[idx],
                             "anomalous": anomalous[idx]}
                     for which, idx in (("most", order[::-1][:n]), ("least", order[:n]))}
        out[name]["normal_ink"] = float(images[~anomalous].sum(1).mean())
    return out


def anomaly_facts(study: dict, rankings: dict, y_test: Any) -> dict:
    """The numbers the anomaly chapter states, with its claims checked. Held-out digit: every
    likelihood-based score ranks the unseen digit as less unusual (AUROC < 0.2), the KL scores
    stay between 0.2 and 0.6, the IWAE's score is within 0.05 of the VAE's, a 1 scores far
    lower (by 20 nats or more) than the other digits whether or not the model saw 1s, and at
    least five of the eight least unusual images are the unseen digit. Omniglot: the
    likelihood-based scores reach 0.7 to 0.9 and the KL scores less, the IWAE's score is no
    better than the VAE's, and the eight least unusual images are all Omniglot characters with
    far less ink than a digit, some of them patterns of dots (:func:`dot_patterns`) and the
    others one short stroke each; the most unusual ones have more ink than a digit.

    rankings: :func:`anomaly_rankings`; y_test: MNIST's test labels."""
    setups = study["setups"]
    au = {name: {(m["objective"], m["k"]): m["auroc"] for m in s["models"]}
          for name, s in setups.items()}
    held, omni = au["heldout"], au["omniglot"]
    kl = ("s_vae_kl", "s_iwae_kl")
    check_claim(all(a[sc] < 0.2 for a in held.values() for sc in LIKELIHOOD_SCORES),
           "the likelihood scores rank the unseen digit as less unusual", held)
    check_claim(all(0.2 < a[sc] < 0.6 for a in held.values() for sc in kl),
           "the KL scores stay near chance", held)
    d_held = [held["iwae", k]["s_iwae"] - held["vae", k]["s_vae"] for k in (5, 50)]
    check_claim(all(abs(d) < 0.05 for d in d_held), "the IWAE does not help (held-out)", d_held)
    check_claim(all(0.7 < a[sc] < 0.9 for a in omni.values() for sc in LIKELIHOOD_SCORES),
           "the likelihood scores detect Omniglot", omni)
    check_claim(all(max(a[sc] for sc in kl) < min(a[sc] for sc in LIKELIHOOD_SCORES)
               for a in omni.values()), "the KL scores are weaker on Omniglot", omni)
    d_omni = [omni["iwae", k]["s_iwae"] - omni["vae", k]["s_vae"] for k in (5, 50)]
    check_claim(all(d < 0.01 for d in d_omni), "the IWAE does not help (Omniglot)", d_omni)
    least_omni, least_held = rankings["omniglot"]["least"], rankings["heldout"]["least"]
    blank_ink = float(least_omni["images"].sum(1).mean())
    n_least = len(least_omni["anomalous"])
    n_dots = int(dot_patterns(least_omni["images"]).sum())
    check_claim(bool(least_omni["anomalous"].all()), "the least unusual are all Omniglot")
    check_claim(blank_ink < 0.2 * rankings["omniglot"]["normal_ink"], "they are almost blank")
    strokes = n_least - n_dots
    check_claim(n_dots >= 1 and all(n == 1 for n in blob_counts(least_omni["images"])
                               [~dot_patterns(least_omni["images"])]),
           "some are dot patterns, the others one short stroke each", n_dots)
    most_ink = float(rankings["omniglot"]["most"]["images"].sum(1).mean())
    check_claim(most_ink > rankings["omniglot"]["normal_ink"], "the most unusual are inky")
    ones_least = int(least_held["anomalous"].sum())
    check_claim(ones_least >= 5, "most of the least unusual are the unseen digit", ones_least)

    def iwae50(name: str) -> dict:
        return next(m for m in setups[name]["models"] if m["objective"] == "iwae"
                    and m["k"] == 50)

    full, held_m = iwae50("omniglot"), iwae50("heldout")
    y = np.asarray(y_test[:setups["omniglot"]["n_normal"]])
    s_full = np.asarray(full["scores_normal"]["s_iwae"])
    ones_full, others_full = float(s_full[y == 1].mean()), float(s_full[y != 1].mean())
    ones_held = float(np.mean(held_m["scores_anomalous"]["s_iwae"]))
    others_held = float(np.mean(held_m["scores_normal"]["s_iwae"]))
    a = study["protocol"]["args"]
    check_claim(a["held_out"] == 1, "the held-out digit is the 1", a["held_out"])
    check_claim(ones_full < ones_held < others_held - 20 and ones_full < others_full - 20,
           "a 1 is likely whether or not the model saw one",
           ones_full, ones_held, others_held, others_full)
    check_claim(ones_held - ones_full < others_held - ones_held,
           "never having seen a 1 costs less than a 1 saves")
    return {"epochs": a["epochs"], "batch_size": a["batch_size"], "eval_n": a["eval_n"],
            "L": a["L"], "digit": a["held_out"], "n_heldout": setups["heldout"]["n_anomalous"],
            "held_max": max(v[sc] for v in held.values() for sc in LIKELIHOOD_SCORES),
            "held_kl_max": max(v[sc] for v in held.values() for sc in kl),
            "held_iwae_vs_vae": d_held, "omni_iwae_vs_vae": d_omni,
            "omni_min": min(v[sc] for v in omni.values() for sc in LIKELIHOOD_SCORES),
            "omni_max": max(v[sc] for v in omni.values() for sc in LIKELIHOOD_SCORES),
            "omni_kl_max": max(v[sc] for v in omni.values() for sc in kl),
            "blank_ink": blank_ink, "digit_ink": rankings["omniglot"]["normal_ink"],
            "most_ink": most_ink,
            "n_least": n_least, "n_dots": n_dots, "n_strokes": strokes,
            "ones_least": ones_least, "ones_full": ones_full,
            "ones_held": ones_held, "others": others_held,
            "omni_mean": float(np.mean(full["scores_anomalous"]["s_iwae"]))}
