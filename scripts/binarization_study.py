"""Dynamic vs fixed binarization, train and test bound per epoch -> binarization-study.json.

The authors' code notes that fixed binarization (Larochelle's files) overfits and scores worse
than dynamic binarization (a fresh Bernoulli draw of the grey MNIST images every epoch). One
fleet per binarization, VAE and IWAE (k = 5, one stochastic layer), the first EPOCHS epochs of
the paper's schedule at minibatch BATCH (rates times sqrt(B / 20)), seed 0. After every epoch
the fleet's callback scores each model by L_K on N training and N test images (fixed images:
binarized once, seed 0, for the dynamic data; the fixed split's test images evenly spaced, as
it is ordered by digit), so the curves show the generalisation gap as it opens.

Resumable: each fleet checkpoints under ``--run-root`` (the per-epoch scores of a finished
fleet are in the result file; rerun to continue an unfinished one). Last, every model's test
NLL by L_EVAL_K on both test sets (``nll``), read back from the fleets' checkpoints.

    python scripts/binarization_study.py                    # ~15 min on one CPU core
    python scripts/binarization_study.py --epochs 2 --n-train 200 --n 20 --k 10 \\
        --out /tmp/b.json --run-root /tmp/b                  # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.data import Dataset, load_dataset
from iwae_tutorial.evaluate import eval_images, eval_subset_text, log_likelihood_many
from iwae_tutorial.fleet import FLEET_CHECKPOINT, Fleet
from iwae_tutorial.paper import ONE_LAYER
from iwae_tutorial.provenance import provenance
from iwae_tutorial.runs import RunConfig
from iwae_tutorial.schedule import lr_scale_for_batch
from iwae_tutorial.studies import (
    add_run_arguments,
    earlier_provenance,
    finished_parts,
    protocol_args,
    start,
)

ROOT = Path(__file__).resolve().parent.parent
DATASETS = {"dynamic": "mnist", "fixed": "binarized-mnist"}
GRID = [("vae", 5), ("iwae", 5)]


def configs(dataset: str, args: argparse.Namespace) -> list[RunConfig]:
    """The fleet of one binarization: VAE and IWAE of :data:`GRID`, one stochastic layer."""
    return [RunConfig(dataset=dataset, objective=o, k=k, layers=[list(s) for s in ONE_LAYER],
                      epochs=args.epochs, seed=0, batch_size=args.batch_size,
                      lr_scale=lr_scale_for_batch(args.batch_size), n_train=args.n_train)
            for o, k in GRID]


def trained_models(ds: Dataset, name: str, args: argparse.Namespace) -> list:
    """The finished fleet of one binarization, read back from its checkpoint (no training)."""
    run_dir = Path(args.run_root) / name
    if not (run_dir / FLEET_CHECKPOINT).exists():
        raise SystemExit(f"{run_dir / FLEET_CHECKPOINT} is missing: the NLL of the trained "
                         f"models needs it; delete {args.out} and rerun to train them again")
    cfgs = configs(ds.name, args)
    x_train = ds.x_train if args.n_train is None else ds.x_train[:args.n_train]
    fleet = Fleet.from_configs(cfgs, ds, "cpu")
    res = fleet.fit(x_train, schedule=cfgs[0].schedule(), batch_size=args.batch_size,
                    run_dir=run_dir, progress=False, max_seconds=0)
    if not res.finished:
        raise SystemExit(f"{run_dir} does not hold a finished fleet; delete it and rerun")
    return fleet.models()


def score_across(args: argparse.Namespace, eval_k: int) -> dict:
    """Test NLL by L_eval_k of every model on both test sets (the dynamic data's, binarized
    once by us; the fixed files', binarized by Larochelle): the two binarizations' models
    compared on the same images, on each set."""
    t0 = time.perf_counter()
    datasets = {name: load_dataset(d) for name, d in DATASETS.items()}
    test_sets = {name: (ds, eval_images(ds, args.n, seed=0)) for name, ds in datasets.items()}
    out: dict = {"eval_k": eval_k, "test_sets": {
        name: eval_subset_text(ds, args.n) + (", binarized once (seed 0)" if ds.binarize else
                                              ", as binarized in the files")
        for name, (ds, _) in test_sets.items()}, "models": []}
    for trained_on, ds in datasets.items():
        models = trained_models(ds, trained_on, args)
        entries = [{"trained_on": trained_on, "objective": o, "k": k, "nll": {},
                    "nll_stderr": {}, "nll_per_image": {}} for o, k in GRID]
        for scored_on, (_, x) in test_sets.items():
            gens = [torch.Generator().manual_seed(0) for _ in models]
            ll = log_likelihood_many(models, x, eval_k, generators=gens)
            for e, v in zip(entries, ll):
                e["nll"][scored_on] = float(-v.mean())
                e["nll_stderr"][scored_on] = float(v.std() / v.numel() ** 0.5)
                e["nll_per_image"][scored_on] = [round(-a, 4) for a in v.tolist()]
        out["models"] += entries
    out["wall_time_s"] = time.perf_counter() - t0
    return out


def train_and_score(name: str, dataset: str, args: argparse.Namespace) -> dict | None:
    """One fleet (VAE and IWAE) on one binarization, scored after every epoch; None when the
    fleet stopped or was resumed part-way (its per-epoch scores would be incomplete)."""
    ds = load_dataset(dataset)
    cfgs = configs(dataset, args)
    x_train = ds.x_train if args.n_train is None else ds.x_train[:args.n_train]
    g = torch.Generator().manual_seed(0)
    x_tr = x_train[:args.n]
    x_tr = torch.bernoulli(x_tr, generator=g) if ds.binarize else x_tr
    x_te = eval_images(ds, args.n, seed=0)
    fleet = Fleet.from_configs(cfgs, ds, "cpu")
    curves: dict[str, dict[str, list[float]]] = {c.name: {"train": [], "test": []} for c in cfgs}

    def score(epoch: int, logs: list[dict]) -> None:
        models = fleet.models()
        for split, x in (("train", x_tr), ("test", x_te)):
            gens = [torch.Generator().manual_seed(epoch) for _ in models]
            ll = log_likelihood_many(models, x, args.k, generators=gens)
            for c, v in zip(cfgs, ll):
                curves[c.name][split].append(float(v.mean()))

    t0 = time.perf_counter()
    res = fleet.fit(x_train, schedule=cfgs[0].schedule(), batch_size=args.batch_size,
                    run_dir=Path(args.run_root) / name, progress=True, callback=score)
    if not res.finished or any(len(v["test"]) != args.epochs for v in curves.values()):
        print(f"{name}: stopped or resumed part-way (per-epoch scores are kept only for epochs "
              "run in one session); delete --run-root and rerun", file=sys.stderr)
        return None
    return {"dataset": ds.name, "n_train": int(x_train.shape[0]),
            "test_images": eval_subset_text(ds, args.n),
            "models": [{"name": c.name, "objective": c.objective, "k": c.k,
                        "train_bound_per_epoch": [h["train_bound"] for h in hist],
                        "train_L_k": curves[c.name]["train"],
                        "test_L_k": curves[c.name]["test"]}
                       for c, hist in zip(cfgs, res.history)],
            "wall_time_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n", type=int, default=1000, help="train and test images scored per epoch")
    p.add_argument("--k", type=int, default=100, help="samples of the per-epoch L_k")
    p.add_argument("--eval-k", type=int, default=5000,
                   help="samples of the final test NLL of every model on both test sets")
    add_run_arguments(p, ROOT / "runs" / "binarization-study",
                      ROOT / "results" / "binarization-study.json")
    args = p.parse_args(argv)
    t_start = start(args.threads)
    out = Path(args.out)
    protocol = protocol_args(args, "eval_k")  # another --eval-k only rescores
    done = finished_parts(out, protocol, "binarizations")
    across = finished_parts(out, protocol, "nll")
    n_before = len(done) + bool(across)
    earlier = earlier_provenance(out) if n_before else []

    def write() -> None:
        write_json_atomic(out, {
            "study": "binarization",
            "protocol": {"args": protocol, "layers": [list(s) for s in ONE_LAYER],
                         "schedule": "the paper's first EPOCHS epochs, rates times "
                                     "sqrt(batch / 20)",
                         "per_epoch": f"L_{args.k} on {args.n} training images and {args.n} "
                                      "test images after every epoch",
                         "device": "cpu", "torch_threads": torch.get_num_threads()},
            "binarizations": done, **({"nll": across} if across else {}),
            "provenance": provenance(command=["python", "scripts/binarization_study.py",
                                              *(argv if argv is not None else sys.argv[1:])],
                                     wall_seconds=time.perf_counter() - t_start, device="cpu"),
            **({"earlier_provenance": earlier} if earlier else {}),
        })

    for name, dataset in DATASETS.items():
        if name in done:
            continue
        result = train_and_score(name, dataset, args)
        if result is None:
            return 75
        done[name] = result
        write()
        for m in done[name]["models"]:
            print(f"{name} {m['objective']}: train {m['train_L_k'][-1]:.2f}, test "
                  f"{m['test_L_k'][-1]:.2f}", file=sys.stderr)
    if across.get("eval_k") != args.eval_k:
        across = score_across(args, args.eval_k)
        write()
        for m in across["models"]:
            print(f"trained {m['trained_on']}, {m['objective']}: NLL " + ", ".join(
                f"{v:.2f} on the {s} test set" for s, v in m["nll"].items()), file=sys.stderr)
    print(f"wrote {out}" if len(done) + bool(across) > n_before
          else f"{out}: done already (same arguments)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
