"""Evaluation throughput: L_5000 on test images for the 12 models of Table 1.

Three ways, in one run on one machine:

- ``per_example_loop``: what public implementations typically do: for each test image, for
  each model, one forward pass over its 5,000 samples (``model.log_weights(x_i, 5000)``),
  then a log-mean-exp;
- ``evaluate_one_model_at_a_time``: :func:`iwae_tutorial.evaluate.log_likelihood` with
  ``kernel="reference"`` (a loop over ``IWAE.log_weights``), batched over examples and
  streamed over samples, model by model (its default kernel, "fused", is
  ``log_likelihood_many`` with one model);
- ``fleet``: :func:`iwae_tutorial.evaluate.log_likelihood_many`, all 12 models at once (models
  of the same architecture stacked, oneDNN matmuls on the CPU when available, q(h_1|x) computed
  once per batch, the Bernoulli log-likelihood fused).

Throughput is in (model x test image) evaluations per second; the methods are timed in
interleaved rounds and the median reported. The last line of output is a JSON
object with ``device``, ``speedup`` (fleet over the per-example loop), ``speedup_vs_evaluate``,
the fraction of peak FLOP/s and ``projected_full_eval_hours`` (12 models x 10,000 test images).
The models are freshly initialised (the cost does not depend on the weights).

    python benchmarks/eval_throughput.py            # ~2-4 minutes on 2 CPU cores
    python benchmarks/eval_throughput.py --n-loop 1 --n 10 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import (  # noqa: E402
    X_DIM,
    Timer,
    build_models,
    load_average,
    median,
    peak_flops,
    report,
    run_header,
)

from iwae_tutorial.bounds import log_mean_exp  # noqa: E402
from iwae_tutorial.evaluate import log_likelihood, log_likelihood_many  # noqa: E402
from iwae_tutorial.fleet import table1_configs  # noqa: E402
from iwae_tutorial.fleet.stacked import tune_malloc  # noqa: E402

N_TEST = 10_000


def eval_flops_per_sample(layers: list[list[int]]) -> float:
    """FLOPs of the matrix products of one sample's log-weight (forward only). q(h_1 | x) is
    computed once per image by all three methods (the samples share it), so it is left out."""
    macs = 0
    dims = [X_DIM] + [s[-1] for s in layers]
    for level, spec in enumerate(layers):
        if level > 0:
            sizes = [dims[level], *spec[:-1]]
            macs += sum(a * b for a, b in zip(sizes, sizes[1:])) + sizes[-1] * 2 * spec[-1]
        sizes = [spec[-1], *reversed(spec[:-1])]
        out = dims[level] * (1 if level == 0 else 2)
        macs += sum(a * b for a, b in zip(sizes, sizes[1:])) + sizes[-1] * out
    return 2.0 * macs


def load_test_images(n: int) -> torch.Tensor:
    try:
        from iwae_tutorial.data import load_mnist

        x = load_mnist(download=False).x_test[:n]
    except Exception:  # noqa: BLE001 - no data: random grey images cost the same
        x = torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(0))
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def per_example_loop(models, x, k, gen):
    out = torch.empty(len(models), len(x), dtype=torch.float64)
    for i in range(len(x)):
        xi = x[i:i + 1]
        for j, m in enumerate(models):
            out[j, i] = log_mean_exp(m.log_weights(xi, k, generator=gen).double(), dim=0)[0]
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--n-loop", type=int, default=2,
                   help="test images per round for the per-example loop (12 models each)")
    p.add_argument("--n", type=int, default=10,
                   help="test images per round for the batched methods (12 models each)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--batch-size", type=int, default=10, help="images per batch (batched)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's malloc defaults (applied to all three methods otherwise)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the JSON result to FILE")
    args = p.parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_before = load_average()
    cfgs = table1_configs("mnist")
    models = [m.eval() for m in build_models(cfgs, device, None)]
    x = load_test_images(max(args.n, args.n_loop)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    flop_per_eval = sum(eval_flops_per_sample(c.layers) for c in cfgs) / len(cfgs) * args.k

    # warm-up at full size (the first k = 5000 pass of each shape is several times slower)
    per_example_loop(models, x[:1], args.k, gen)
    for m in models:
        log_likelihood(m, x[:args.batch_size], args.k, batch_size=args.batch_size,
                       generator=gen, kernel="reference")
    log_likelihood_many(models, x[:args.batch_size], args.k, batch_size=args.batch_size)

    methods = {
        "per_example_loop": (args.n_loop, lambda xs: per_example_loop(models, xs, args.k, gen)),
        "evaluate_one_model_at_a_time": (args.n, lambda xs: [
            log_likelihood(m, xs, args.k, batch_size=args.batch_size, generator=gen,
                           kernel="reference")
            for m in models]),
        "fleet": (args.n, lambda xs: log_likelihood_many(models, xs, args.k,
                                                         batch_size=args.batch_size)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for r in range(args.rounds):  # interleaved, so a change of load hits all methods alike
        for name, (n, fn) in methods.items():
            with Timer(device) as t:
                fn(x[:n])
            times[name].append((t.wall / (n * len(models)), t.cpu / (n * len(models))))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{name} {1e3 * v[-1][0]:.1f} ms" for name, v in times.items())
            + f" per (model x image); load {load_average()}", flush=True)

    peak = peak_flops(device)
    out = {
        **run_header("eval_throughput", device, malloc_tuned, load_before),
        "k": args.k,
        "rounds": args.rounds,
        "models": len(models),
        "peak_flops": peak,
    }
    for name, (n, _) in methods.items():
        wall = median([w for w, _ in times[name]])
        out[name] = {"test_images_per_round": n,
                     "s_per_model_image": wall,
                     "cpu_s_per_model_image": median([c for _, c in times[name]]),
                     "model_image_evals_per_s": 1 / wall,
                     "fraction_of_peak": flop_per_eval / wall / peak["peak"]}

    def ratio(a: str, b: str, i: int = 0) -> float:  # median over rounds of b's time / a's
        return median([tb[i] / ta[i] for ta, tb in zip(times[a], times[b])])

    rate = {k: out[k]["model_image_evals_per_s"] for k in methods}
    out["speedup"] = ratio("fleet", "per_example_loop")
    out["speedup_per_round"] = [tb[0] / ta[0] for ta, tb in zip(times["fleet"],
                                                                times["per_example_loop"])]
    out["speedup_vs_evaluate"] = ratio("fleet", "evaluate_one_model_at_a_time")
    out["speedup_cpu_time"] = ratio("fleet", "per_example_loop", 1)
    out["fraction_of_peak_flops"] = out["fleet"]["fraction_of_peak"]
    out["projected_full_eval_hours"] = len(models) * N_TEST / rate["fleet"] / 3600
    out["projected_full_eval_hours_per_example_loop"] = (len(models) * N_TEST
                                                         / rate["per_example_loop"] / 3600)
    out["notes"] = ("throughput in (model x test image) L_k evaluations per second, wall "
                    "time; FLOPs count the matrix products of the forward passes only")
    return report(out, args.out)


if __name__ == "__main__":
    main()
