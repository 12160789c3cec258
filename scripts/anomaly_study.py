"""Anomaly detection with VAE and IWAE scores -> results/anomaly-study.json.

Two set-ups, each one fleet of four one-layer models (VAE and IWAE, k = 5 and 50), trained for
the first EPOCHS epochs of the paper's schedule at minibatch BATCH (rates times sqrt(B / 20)):

- ``heldout``: trained on dynamically binarized MNIST without the digit HELD_OUT; the held-out
  digit's test images are the anomalies, the test digits of the other classes the normal data;
- ``omniglot``: trained on all of MNIST; Omniglot (lake28) test characters are the anomalies,
  MNIST test digits the normal data.

Every model scores the first N images of each side (binarized once, seed 0) with the six scores
of :mod:`iwae_tutorial.anomaly` (L samples), and the AUROC of every score is computed with
scikit-learn's ``roc_auc_score`` (anomalies the positive class). The per-image values of s_vae
and s_iwae of the k = 50 models are kept (to 0.01 nats) for the chapter's ROC curves,
histograms and rankings.

Resumable: the fleets keep checkpoints under ``--run-root``; rerun to continue.

    python scripts/anomaly_study.py                         # ~35 min on one CPU core
    python scripts/anomaly_study.py --epochs 1 --n-train 300 --eval-n 20 --L 5 \\
        --out /tmp/a.json --run-root /tmp/a                  # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from iwae_tutorial.anomaly import SCORES, anomaly_scores, scored_images, setups
from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.fleet import Fleet
from iwae_tutorial.paper import ONE_LAYER
from iwae_tutorial.provenance import provenance
from iwae_tutorial.results import model_record
from iwae_tutorial.runs import RunConfig
from iwae_tutorial.schedule import lr_scale_for_batch
from iwae_tutorial.studies import add_run_arguments, finished_parts, protocol_args, start

ROOT = Path(__file__).resolve().parent.parent
GRID = [("vae", 5), ("iwae", 5), ("vae", 50), ("iwae", 50)]
KEPT = ("s_vae", "s_iwae")  # the scores kept per image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--held-out", type=int, default=1, help="the digit left out (default 1)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--L", type=int, default=100, help="samples per score (default 100)")
    p.add_argument("--eval-n", type=int, default=2000, help="images per side (default 2000)")
    add_run_arguments(p, ROOT / "runs" / "anomaly-study", ROOT / "results" / "anomaly-study.json")
    args = p.parse_args(argv)
    t_start = start(args.threads)
    out = Path(args.out)
    protocol = protocol_args(args)
    done = finished_parts(out, protocol, "setups")
    n_before = len(done)
    all_setups = setups(args.held_out)
    for name, (ds, normal, anomalous, trained_on, pos, neg) in all_setups.items():
        if name in done:
            continue
        cfgs = [RunConfig(objective=o, k=k, layers=[list(s) for s in ONE_LAYER],
                          epochs=args.epochs, seed=0, batch_size=args.batch_size,
                          lr_scale=lr_scale_for_batch(args.batch_size), n_train=args.n_train)
                for o, k in GRID]
        x_train = ds.x_train if args.n_train is None else ds.x_train[:args.n_train]
        fleet = Fleet.from_configs(cfgs, ds, "cpu")
        t0 = time.perf_counter()
        res = fleet.fit(x_train, schedule=cfgs[0].schedule(), batch_size=args.batch_size,
                        run_dir=Path(args.run_root) / name, progress=True)
        if not res.finished:
            print("stopped (state saved); run the same command again to continue",
                  file=sys.stderr)
            return 75
        t_train = time.perf_counter() - t0
        xn = scored_images(normal, args.eval_n, anomalous=False)
        xa = scored_images(anomalous, args.eval_n, anomalous=True)
        labels = torch.cat([torch.zeros(len(xn)), torch.ones(len(xa))]).numpy()
        models = []
        t0 = time.perf_counter()
        for cfg, model, hist in zip(cfgs, fleet.models(), res.history):
            g = torch.Generator().manual_seed(0)
            sn = anomaly_scores(model, xn, args.L, generator=g)
            sa = anomaly_scores(model, xa, args.L, generator=g)
            models.append(model_record(  # the one record, no test NLL; the study's scores
                cfg, ds.name, hist,
                auroc={s: float(roc_auc_score(labels, torch.cat([sn[s], sa[s]]).numpy()))
                       for s in SCORES},
                # per image, for the chapter's ROC curves, histograms and rankings: the two
                # total scores of the k = 50 models (the package data stays small)
                scores_normal={s: [round(v, 2) for v in sn[s].tolist()] for s in KEPT}
                if cfg.k == 50 else {},
                scores_anomalous={s: [round(v, 2) for v in sa[s].tolist()] for s in KEPT}
                if cfg.k == 50 else {},
            ))
        done[name] = {"trained_on": trained_on, "anomalies": pos, "normal": neg,
                      "n_train": int(x_train.shape[0]), "n_normal": len(xn),
                      "n_anomalous": len(xa), "models": models,
                      "wall_time_s": {"train_this_session": t_train,
                                      "train_all_sessions": sum(h["seconds"]
                                                                for h in res.history[0]),
                                      "scores": time.perf_counter() - t0}}
        write_json_atomic(out, {
            "study": "anomaly-scores",
            "protocol": {"args": protocol, "layers": [list(s) for s in ONE_LAYER],
                         "schedule": "the paper's first EPOCHS epochs, rates times "
                                     "sqrt(batch / 20)",
                         "binarization": "training: dynamic; scored images: one Bernoulli "
                                         "draw (seed 0 normal, seed 1 anomalous)",
                         "auroc": "sklearn.metrics.roc_auc_score, anomalies positive",
                         "device": "cpu", "torch_threads": torch.get_num_threads()},
            "setups": done,
            "provenance": provenance(command=["python", "scripts/anomaly_study.py",
                                              *(argv if argv is not None else sys.argv[1:])],
                                     wall_seconds=time.perf_counter() - t_start, device="cpu"),
        })
        for m in models:
            print(f"{name} {m['objective']} k={m['k']}: " + ", ".join(
                f"{s} {v:.3f}" for s, v in m["auroc"].items()), file=sys.stderr)
    print(f"wrote {out}" if len(done) > n_before else f"{out}: done already (same arguments)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
