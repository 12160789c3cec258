"""Gradient signal-to-noise ratio against k on a trained MNIST model -> results/snr-mnist.json.

The model is the one-layer IWAE (k = 5) the package ships (``iwae_tutorial/trained``); the
gradients are those of the batch-mean objective on the first N test images (binarized once,
seed 0), drawn REPEATS times per k with fresh samples (``snr.snr_curve``), for the IWAE
estimator, STL and DReG. Each estimator is written to the result file as soon as it is done;
rerun the same command to continue.

    python scripts/snr_study.py                     # ~10 min on 2 CPU cores
    python scripts/snr_study.py --repeats 8 --ks 1 10 --out /tmp/snr.json   # seconds
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
from iwae_tutorial.evaluate import eval_images
from iwae_tutorial.provenance import provenance
from iwae_tutorial.runs import find_trained, load_model_file
from iwae_tutorial.snr import fit_slope, snr_curve

ROOT = Path(__file__).resolve().parent.parent


def _slope(ks: list[int], values: list[float]) -> float | None:
    try:
        return fit_slope(ks, values, 10)
    except ValueError:  # fewer than two positive values at k >= 10
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 10, 30, 100, 300, 1000])
    p.add_argument("--objectives", nargs="+", default=["iwae", "stl", "dreg"])
    p.add_argument("--repeats", type=int, default=256)
    p.add_argument("--n", type=int, default=4, help="test images in the minibatch")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "results" / "snr-mnist.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    out = Path(args.out)
    path, meta = find_trained("mnist", "iwae", 5, [[200, 200, 50]])
    model = load_model_file(path)
    x = eval_images(load_dataset("mnist"), args.n, seed=0)
    protocol = {"ks": args.ks, "repeats": args.repeats, "n": args.n, "model": path.name}
    done: dict = {}
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("protocol", {}).get("args") == protocol:
            done = old["curves"]
    wall = {}
    for obj in args.objectives:
        if obj in done:
            continue
        t0 = time.perf_counter()
        c = snr_curve(model, x, args.ks, obj, args.repeats, seed=0)
        wall[obj] = time.perf_counter() - t0
        done[obj] = {"network": c.network, "median": c.median,
                     "slopes_k_ge_10": {net: _slope(c.ks, v) for net, v in c.network.items()},
                     "wall_time_s": wall[obj]}
        write_json_atomic(out, {
            "study": "gradient-snr",
            "protocol": {"args": protocol, "dataset": "mnist",
                         "images": f"the first {args.n} test images, binarized once (seed 0)",
                         "model": {"file": path.name, "epochs": meta.get("epochs"),
                                   "nll": meta.get("nll"),
                                   "eval_k": meta.get("eval_k")},
                         "snr": "network SNR = ||mean g|| / sqrt(sum of variances), the squared "
                                "signal debiased (snr.network_snr); median: over parameters of "
                                "the per-parameter SNR (snr.snr)",
                         "device": "cpu", "torch_threads": torch.get_num_threads()},
            "curves": done,
            "provenance": provenance(command=["python", "scripts/snr_study.py",
                                              *(argv if argv is not None else sys.argv[1:])],
                                     wall_seconds=time.perf_counter() - t_start, device="cpu"),
        })
        print(f"{obj}: {done[obj]['slopes_k_ge_10']} ({wall[obj]:.0f} s)", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
