"""What a larger minibatch costs: batch 20 (the paper's) vs larger batches at equal epochs.

The full Table 1 (3,280 epochs) fits one GPU command only at a batch larger than the paper's
20 (see the GPU-table notes in ``benchmarks/README.md``). This study measures, on the CPU and on
a shorter budget, how much test NLL that costs: one stochastic layer, VAE and IWAE, k = 5 and
50, two seeds, the first EPOCHS epochs of the paper's schedule at each batch size, with the
learning rates scaled by sqrt(batch / 20) (``schedule.lr_scale_for_batch``). Each batch size
trains as one fleet (8 members) and is then scored by L_5000 on the first N test images
(binarized once, seed 0) and by the paper's active-unit count.

Resumable: every batch size has its own fleet checkpoint under ``--run-root``, and each
finished batch size is written to the result file at once; rerun the same command to continue.

    python scripts/batch_size_study.py                      # ~1.5 h on 2 CPU cores
    python scripts/batch_size_study.py --epochs 1 --n-train 400 --eval-n 20 --eval-k 50 \\
        --batches 20 100 --out /tmp/study.json --run-root /tmp/study   # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.data import load_dataset
from iwae_tutorial.evaluate import (
    ACTIVE_UNITS_THRESHOLD,
    eval_images,
    log_likelihood_many,
    paper_active_units,
)
from iwae_tutorial.fleet import Fleet
from iwae_tutorial.paper import ONE_LAYER
from iwae_tutorial.provenance import provenance
from iwae_tutorial.results import evaluation_fields, model_record
from iwae_tutorial.runs import RunConfig
from iwae_tutorial.schedule import lr_scale_for_batch
from iwae_tutorial.studies import add_run_arguments, finished_parts, protocol_args, start

ROOT = Path(__file__).resolve().parent.parent


def configs(batch: int, epochs: int, seeds: list[int], ks: list[int],
            n_train: int | None) -> list[RunConfig]:
    return [RunConfig(objective=o, k=k, layers=[list(s) for s in ONE_LAYER], epochs=epochs,
                      seed=s, batch_size=batch, lr_scale=lr_scale_for_batch(batch),
                      n_train=n_train)
            for o in ("vae", "iwae") for k in ks for s in seeds]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[20, 500])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 50])
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--eval-n", type=int, default=2000)
    add_run_arguments(p, ROOT / "runs" / "batch-size-study",
                      ROOT / "results" / "batch-size-study.json")
    args = p.parse_args(argv)
    protocol = protocol_args(args, "batches")  # another --batches adds or skips batch sizes
    t_start = start(args.threads)
    out = Path(args.out)
    ds = load_dataset("mnist")
    x_eval = eval_images(ds, args.eval_n, seed=0)
    done = {int(b): v for b, v in finished_parts(out, protocol, "by_batch").items()}
    for batch in args.batches:
        if batch in done:
            print(f"batch {batch}: done already", file=sys.stderr)
            continue
        cfgs = configs(batch, args.epochs, args.seeds, args.ks, args.n_train)
        fleet = Fleet.from_configs(cfgs, ds, "cpu")
        x_train = ds.x_train if args.n_train is None else ds.x_train[:args.n_train]
        t0 = time.perf_counter()
        res = fleet.fit(x_train, schedule=cfgs[0].schedule(), batch_size=batch,
                        run_dir=Path(args.run_root) / f"batch{batch}", progress=True)
        t_train = time.perf_counter() - t0
        if not res.finished:  # a signal: the fleet saved its state; rerun to continue
            print(f"batch {batch}: stopped after epoch {res.epochs_done} (state saved); run "
                  "the same command again to continue", file=sys.stderr)
            return 75
        models = fleet.models()
        t0 = time.perf_counter()
        gens = [torch.Generator().manual_seed(0) for _ in models]
        ll = log_likelihood_many(models, x_eval, args.eval_k, generators=gens, progress=True)
        t_eval = time.perf_counter() - t0
        records = []
        for i, c in enumerate(cfgs):
            au, n_au = paper_active_units(models[i], ds.x_train, ds.binarize, 0)
            ev = evaluation_fields(ll[i], k=args.eval_k, n_total=ds.x_test.shape[0], seed=0,
                                   binarized=True, active_units=au, active_units_n=n_au,
                                   threshold=ACTIVE_UNITS_THRESHOLD)
            records.append(model_record(c, ds.name, res.history[i], ev))
        done[batch] = {"batch_size": batch, "lr_scale": lr_scale_for_batch(batch),
                       "steps_per_epoch": x_train.shape[0] // batch,
                       "wall_time_s": {"train": t_train, "eval_nll": t_eval,
                                       "train_all_sessions": sum(h["seconds"]
                                                                 for h in res.history[0])},
                       "configurations": records}
        write_json_atomic(out, {
            "study": "batch-size",
            "protocol": {
                "args": protocol, "dataset": ds.name, "layers": [list(s) for s in ONE_LAYER],
                "schedule": "the paper's first EPOCHS epochs, rates times sqrt(batch / 20)",
                "n_train": int(ds.x_train.shape[0] if args.n_train is None else args.n_train),
                "eval_subset": f"the first {x_eval.shape[0]} of the {ds.x_test.shape[0]} test "
                               "images, binarized once (seed 0)",
                "device": "cpu", "torch_threads": torch.get_num_threads()},
            "by_batch": {str(b): v for b, v in sorted(done.items())},
            "provenance": provenance(command=["python", "scripts/batch_size_study.py",
                                              *(argv if argv is not None else sys.argv[1:])],
                                     wall_seconds=time.perf_counter() - t_start, device="cpu"),
        })
        means = ", ".join(f"{r['objective']} k={r['k']} s{r['seed']}: {r['nll']:.2f}"
                          for r in records)
        print(f"batch {batch}: {means}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
