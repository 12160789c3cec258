"""Which constant learning rate is best for a ONE-epoch run? Chosen on the validation set.

The paper's schedule starts at lr = 1e-3 because it trains for 3,280 epochs. A one-epoch run
(the README's quick check) is a different budget, so its rate is chosen here the proper way:
1-layer IWAE, k = 5, one epoch on the 59,600 training images, for each rate and seed, scored
by L_5000 on the 400 held-out validation images (binarized once). The test set is not looked
at. Writes ``results/one-epoch-lr.json`` (every run, the chosen rate, provenance).

    python scripts/one_epoch_lr.py                      # ~5 minutes on 2 CPU cores
    python scripts/one_epoch_lr.py --lrs 1e-3 2e-3 --seeds 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.data import load_dataset
from iwae_tutorial.evaluate import log_likelihood
from iwae_tutorial.provenance import provenance
from iwae_tutorial.runs import RunConfig, train_run
from iwae_tutorial.studies import protocol_args

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--k", type=int, default=5, help="training samples (default 5)")
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "one-epoch-lr.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    ds = load_dataset("mnist")
    x_valid = torch.bernoulli(ds.x_valid, generator=torch.Generator().manual_seed(0))
    runs = []
    for lr in args.lrs:
        for seed in args.seeds:
            t0 = time.perf_counter()
            cfg = RunConfig(k=args.k, epochs=1, lr=lr, seed=seed)
            model, history = train_run(cfg, ds=ds, device="cpu", progress=False)
            ll = log_likelihood(model, x_valid, args.eval_k,
                                generator=torch.Generator().manual_seed(0))
            nll = -ll
            runs.append({"lr": lr, "seed": seed, "valid_nll": float(nll.mean()),
                         "valid_nll_stderr": float(nll.std() / len(nll) ** 0.5),
                         "train_bound": float(history[-1]["train_bound"]),
                         "seconds": time.perf_counter() - t0})
            print(f"lr {lr:.3g} seed {seed}: valid NLL {runs[-1]['valid_nll']:.2f} "
                  f"({runs[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    mean_by_lr = {lr: statistics.fmean(r["valid_nll"] for r in runs if r["lr"] == lr)
                  for lr in args.lrs}
    best = min(mean_by_lr, key=mean_by_lr.get)
    wall = time.perf_counter() - t_start
    out = {
        "study": "one-epoch-lr",
        "what": "one-epoch constant learning rate, 1-layer IWAE, chosen on the validation set",
        "protocol": {"args": protocol_args(args),
                     "dataset": "mnist (dynamically binarized)", "n_train": int(len(ds.x_train)),
                     "layers": [[200, 200, 50]], "objective": "iwae", "epochs": 1,
                     "batch_size": 20, "optimizer": "Adam(0.9, 0.999, eps=1e-4)",
                     "score": f"-L_{args.eval_k} on the 400 validation images, binarized once "
                              "(CPU generator seed 0)"},
        "runs": runs,
        "mean_valid_nll_by_lr": {f"{lr:g}": v for lr, v in mean_by_lr.items()},
        "best_lr": best,
        "provenance": provenance(device="cpu", wall_seconds=wall,
                                 command=["python", "scripts/one_epoch_lr.py", *sys.argv[1:]]),
    }
    write_json_atomic(args.out, out)
    print(f"best lr {best:g} (mean valid NLL {mean_by_lr[best]:.2f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
