"""Studies at one equal budget: the power-mean bounds, the gradient estimators (the chapters
"A family of bounds" and "More samples, noisier encoder"), depth and latent size.

Four parts, each one result file:

- ``power`` -> ``results/power-study.json``: fixed-binarization MNIST (Larochelle's files),
  one stochastic layer, k = 50, the power bound L_p^k for p in {0 (the VAE), 0.5, 1 (the IWAE),
  2, 3, 5}, plus the VAE and IWAE at k = 5 and k = 1 (the MLMI4 reconstruction table), all in
  one fleet;
- ``estimators`` -> ``results/estimator-study.json``: dynamically binarized MNIST, one
  stochastic layer, IWAE, STL and DReG at k = 5 and 50, MIWAE(5, 10), PIWAE(5, 10) and
  CIWAE(beta = 0.05, k = 50) (the fleet trains iwae, miwae and ciwae; ``train.fit`` trains
  stl, dreg and piwae, whose gradients are not functions of the log-weights);
- ``depth`` -> ``results/depth-study.json``: dynamic MNIST, VAE and IWAE (k = 5) with 1, 2 and
  3 stochastic layers (3 layers in the paper's pattern: 200-200-100, 100-100-50, 50-50-25);
- ``latent`` -> ``results/latent-study.json``: dynamic MNIST, VAE and IWAE (k = 5), one
  stochastic layer of 10, 20, 50 or 100 latent units (active units per size).

Every model: the first EPOCHS epochs of the paper's schedule at minibatch BATCH with the rates
times sqrt(BATCH / 20), seed 0; then scored by :func:`iwae_tutorial.studies.score_models`
(L_5000 on N test images, active units, reconstruction loss; the fixed binarization's test
split is ordered by digit, so its N images are evenly spaced, ``evaluate.eval_indices``).

Resumable: the fleet and every single run keep checkpoints under ``--run-root``; rerun the same
command to continue. A finished part is not retrained.

    python scripts/objectives_study.py --part power        # ~50 min on 2 CPU cores
    python scripts/objectives_study.py --part estimators   # ~50 min on 2 CPU cores
    python scripts/objectives_study.py --part depth        # ~15 min on one CPU core
    python scripts/objectives_study.py --part latent       # ~15 min on one CPU core
    python scripts/objectives_study.py --part power --epochs 1 --n-train 200 --eval-n 10 \\
        --eval-k 20 --out /tmp/p.json --run-root /tmp/p      # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.data import load_dataset
from iwae_tutorial.evaluate import eval_images, eval_subset_text
from iwae_tutorial.fleet import Fleet
from iwae_tutorial.objectives import fleet_objectives, parse_objective
from iwae_tutorial.paper import ONE_LAYER
from iwae_tutorial.provenance import provenance
from iwae_tutorial.runs import RunConfig, train_run
from iwae_tutorial.schedule import lr_scale_for_batch
from iwae_tutorial.studies import add_run_arguments, protocol_args, score_models, start

ROOT = Path(__file__).resolve().parent.parent

#: (data set, [(objective spec, k), ...]) per part
PARTS = {
    "power": ("binarized-mnist", [("vae", 50), ("power:p=0.5", 50), ("iwae", 50),
                                  ("power:p=2", 50), ("power:p=3", 50), ("power:p=5", 50),
                                  ("vae", 5), ("iwae", 5), ("iwae", 1)]),
    "estimators": ("mnist", [("iwae", 5), ("stl", 5), ("dreg", 5),
                             ("iwae", 50), ("stl", 50), ("dreg", 50),
                             ("miwae:m=5", 10), ("piwae:m=5", 10), ("ciwae:beta=0.05", 50)]),
    # VAE and IWAE (k = 5) with 1, 2 and 3 stochastic layers, in the paper's pattern
    "depth": ("mnist", [(o, 5, layers) for layers in ([[200, 200, 50]],
                                                      [[200, 200, 100], [100, 100, 50]],
                                                      [[200, 200, 100], [100, 100, 50],
                                                       [50, 50, 25]])
                        for o in ("vae", "iwae")]),
    # one stochastic layer with 10, 20, 50 (the paper's) and 100 latent units
    "latent": ("mnist", [(o, 5, [[200, 200, d]]) for d in (10, 20, 50, 100)
                         for o in ("vae", "iwae")]),
}


def configs(part: str, epochs: int, batch: int, n_train: int | None) -> list[RunConfig]:
    """Grid entries are (objective, k) with the paper's one layer, or (objective, k, layers)."""
    dataset, grid = PARTS[part]
    return [RunConfig(dataset=dataset, objective=entry[0], k=entry[1],
                      layers=entry[2] if len(entry) > 2 else [list(s) for s in ONE_LAYER],
                      epochs=epochs, seed=0, batch_size=batch,
                      lr_scale=lr_scale_for_batch(batch), n_train=n_train)
            for entry in grid]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=sorted(PARTS), required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-n", type=int, default=1000)
    add_run_arguments(p, None, None)  # default runs/objectives-study/PART, results/PART-study.json
    args = p.parse_args(argv)
    t_start = start(args.threads)
    stem = {"estimators": "estimator"}.get(args.part, args.part)
    out = Path(args.out or ROOT / "results" / f"{stem}-study.json")
    run_root = Path(args.run_root or ROOT / "runs" / "objectives-study" / args.part)
    protocol = protocol_args(args)
    if out.exists() and json.loads(out.read_text()).get("protocol", {}).get("args") == protocol:
        print(f"{out}: done already", file=sys.stderr)
        return 0
    cfgs = configs(args.part, args.epochs, args.batch_size, args.n_train)
    ds = load_dataset(cfgs[0].dataset)
    x_train = ds.x_train if args.n_train is None else ds.x_train[:args.n_train]
    in_fleet = [c for c in cfgs if parse_objective(c.objective)[0] in fleet_objectives()]
    layers: list = []  # the architectures, in grid order (one: as the paper's list)
    for c in cfgs:
        if c.layers not in layers:
            layers.append(c.layers)
    alone = [c for c in cfgs if c not in in_fleet]
    models, histories, wall = {}, {}, {}
    t0 = time.perf_counter()
    fleet = Fleet.from_configs(in_fleet, ds, "cpu")
    res = fleet.fit(x_train, schedule=in_fleet[0].schedule(), batch_size=args.batch_size,
                    run_dir=run_root / "fleet", progress=True)
    if not res.finished:  # a signal: the fleet saved its state; rerun to continue
        print(f"stopped after epoch {res.epochs_done} (state saved); run the same command "
              "again to continue", file=sys.stderr)
        return 75
    wall["fleet_this_session"] = time.perf_counter() - t0
    wall["fleet_all_sessions"] = sum(h["seconds"] for h in res.history[0])
    for c, m, h in zip(in_fleet, fleet.models(), res.history):
        models[c.name], histories[c.name] = m, h
    for c in alone:
        t0 = time.perf_counter()
        m, h = train_run(c, run_root / c.name, device="cpu", ds=ds, progress=True)
        models[c.name], histories[c.name] = m, h
        wall[f"{c.name}_all_sessions"] = sum(e["seconds"] for e in h)
    t0 = time.perf_counter()
    x_eval = eval_images(ds, args.eval_n, seed=0)
    records = score_models([models[c.name] for c in cfgs], cfgs, ds, x_eval,
                           [histories[c.name] for c in cfgs], eval_k=args.eval_k,
                           progress=True)
    for r, c in zip(records, cfgs):
        r["trainer"] = "fleet" if c in in_fleet else "train.fit"
    wall["eval"] = time.perf_counter() - t0
    write_json_atomic(out, {
        "study": f"objectives-{args.part}",
        "protocol": {
            "args": protocol, "dataset": ds.name,
            "layers": layers if len(layers) > 1 else layers[0],
            "schedule": "the paper's first EPOCHS epochs, rates times sqrt(batch / 20)",
            "lr_scale": lr_scale_for_batch(args.batch_size), "seed": 0,
            "n_train": int(x_train.shape[0]),
            "eval_subset": eval_subset_text(ds, x_eval.shape[0])
                           + (", binarized once (seed 0)" if ds.binarize else ""),
            "device": "cpu", "torch_threads": torch.get_num_threads()},
        "wall_time_s": wall,
        "configurations": records,
        "provenance": provenance(command=["python", "scripts/objectives_study.py",
                                          *(argv if argv is not None else sys.argv[1:])],
                                 wall_seconds=time.perf_counter() - t_start, device="cpu"),
    })
    for r in records:
        print(f"{r['name']}: NLL {r['nll']:.2f}, recon {r['reconstruction_loss']:.2f}, "
              f"active {r['active_units']}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
