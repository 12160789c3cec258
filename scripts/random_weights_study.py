"""IWAE vs IWAER vs IWAERrec (random network weights) at one equal budget
-> results/random-weights-study.json.

The seed document's protocol, shortened: one deterministic hidden layer of 400 tanh units and
20 latent units in each network, Adam with its default parameters (rate 1e-3), minibatches of
100, k = 25, dynamically binarized MNIST; EPOCHS epochs (the seed trains 500) and TRIALS seeds
per method; each model scored by L_2000 over joint samples of weights and latents on the first N
test images (binarized once, seed 0), as the seed scores with 2,000 samples. The learned weight
standard deviations are summarised per layer (quantiles and a histogram of log10 std).

Resumable: every model trains in its own run directory under ``--run-root``; finished models
are written to the result file at once; rerun the same command to continue.

    python scripts/random_weights_study.py                  # ~50 min on one CPU core
    python scripts/random_weights_study.py --epochs 500 --trials 5 --eval-n 10000  # the seed's
    python scripts/random_weights_study.py --epochs 1 --n-train 200 --eval-n 5 --eval-k 20 \\
        --trials 2 --out /tmp/rw.json --run-root /tmp/rw     # a smoke run, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.data import load_dataset
from iwae_tutorial.evaluate import eval_images, log_likelihood
from iwae_tutorial.models import bernoulli_output_bias
from iwae_tutorial.provenance import provenance
from iwae_tutorial.random_weights import RANDOM, RandomWeightsIWAE, weight_stds
from iwae_tutorial.schedule import Stage
from iwae_tutorial.studies import add_run_arguments, finished_parts, protocol_args, start
from iwae_tutorial.train import fit

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [[400, 20]]
K, BATCH, LR = 25, 100, 1e-3
INIT_LOG_STD = -6.0
HIST_BINS = torch.linspace(-7.0, 0.0, 36)  # log10 of the weight standard deviations


def std_summary(model: RandomWeightsIWAE) -> dict:
    out = {}
    for name, s in weight_stds(model).items():
        q = torch.quantile(s.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95],
                                                    dtype=torch.float64))
        counts = torch.histc(s.double().log10().clamp(-7, 0), bins=len(HIST_BINS) - 1,
                             min=-7.0, max=0.0)
        out[name] = {"n": int(s.numel()), "quantiles_5_25_50_75_95": q.tolist(),
                     "mean": float(s.double().mean()), "log10_hist": counts.tolist()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--eval-k", type=int, default=2000)
    p.add_argument("--eval-n", type=int, default=200)
    add_run_arguments(p, ROOT / "runs" / "random-weights-study",
                      ROOT / "results" / "random-weights-study.json")
    args = p.parse_args(argv)
    t_start = start(args.threads)
    out = Path(args.out)
    protocol = protocol_args(args)
    done = {r["name"]: r for r in finished_parts(out, protocol, "models")}
    n_before = len(done)
    ds = load_dataset("mnist")
    x_train = ds.x_train if args.n_train is None else ds.x_train[:args.n_train]
    x_eval = eval_images(ds, args.eval_n, seed=0)
    bias = bernoulli_output_bias(x_train)
    for seed in range(args.trials):
        for random, method in RANDOM.items():
            name = f"{method}-s{seed}"
            if name in done:
                continue
            torch.manual_seed(seed)
            model = RandomWeightsIWAE(ds.x_dim, LAYERS, random=random,
                                      init_log_std=INIT_LOG_STD, output_bias=bias)
            t0 = time.perf_counter()
            history = fit(model, x_train, objective="iwae", k=K, schedule=[Stage(args.epochs, LR)],
                          batch_size=BATCH, seed=seed, binarize=ds.binarize,
                          run_dir=Path(args.run_root) / name, progress=True)
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            ll = log_likelihood(model.eval(), x_eval, args.eval_k, batch_size=100,
                                chunk_size=100, generator=torch.Generator().manual_seed(0),
                                kernel="reference", progress=True)
            done[name] = {
                "name": name, "method": method, "random": random, "seed": seed,
                "epochs": len(history), "history": history,
                "nll": float(-ll.mean()), "nll_stderr": float(ll.std() / len(ll) ** 0.5),
                "nll_per_image": [round(-v, 4) for v in ll.tolist()],
                "weight_stds": std_summary(model) if random != "none" else {},
                "wall_time_s": {"train_this_session": t_train,
                                "train_all_sessions": sum(h["seconds"] for h in history),
                                "eval": time.perf_counter() - t0}}
            write_json_atomic(out, {
                "study": "random-weights",
                "protocol": {
                    "args": protocol, "dataset": ds.name, "layers": LAYERS, "k": K,
                    "batch_size": BATCH, "optimizer": f"Adam, default parameters (lr {LR})",
                    "init_log_std": INIT_LOG_STD, "n_train": int(x_train.shape[0]),
                    "weight_draws": "one per importance sample and minibatch, shared by the "
                                    "minibatch's data points",
                    "eval": f"L_{args.eval_k} over joint samples of weights and latents on the "
                            f"first {x_eval.shape[0]} of the {ds.x_test.shape[0]} test images, "
                            "binarized once (seed 0)",
                    "hist_log10_bin_edges": HIST_BINS.tolist(),
                    "device": "cpu", "torch_threads": torch.get_num_threads()},
                "models": list(done.values()),
                "provenance": provenance(
                    command=["python", "scripts/random_weights_study.py",
                             *(argv if argv is not None else sys.argv[1:])],
                    wall_seconds=time.perf_counter() - t_start, device="cpu"),
            })
            print(f"{name}: NLL {done[name]['nll']:.2f} ({t_train:.0f} s training)",
                  file=sys.stderr)
    print(f"wrote {out}" if len(done) > n_before else f"{out}: done already (same arguments)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
