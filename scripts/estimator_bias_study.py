"""How much of Table 1's VAE - IWAE gap is the estimator? -> results/estimator-bias.json.

L_5000 is a lower bound on log p(x); its shortfall is larger for a model whose posterior q fits
worse (the VAE's): chapter 3 measured 2.27 nats (VAE) against 0.085 (IWAE) on 2-D latents. Here
the one-layer VAE and IWAE with k = 50 of the stage-wise Table 1 (``reproduce``'s saved weights of
one stage) are scored on the first N of the table's test images with L_5000 and with L_K for a
much larger K (default 50,000). The rise from L_5000 to L_K is a lower bound on each model's
estimator bias; the difference of the two rises is how much of the measured gap the estimator
accounts for (at least).

    python scripts/estimator_bias_study.py --run-root runs/reproduce    # ~5 min on 2 cores
    python scripts/estimator_bias_study.py --n 10 --k-big 10000 --out /tmp/bias.json  # seconds
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
from iwae_tutorial.provenance import provenance
from iwae_tutorial.results import pack_per_image
from iwae_tutorial.runs import load_run
from iwae_tutorial.seeding import stream_seed
from iwae_tutorial.stagewise import furthest_stage, load_stagewise, stage_cells

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--result", default=str(ROOT / "results" / "mnist-121-2L40.json"),
                   help="the stage-wise Table 1 file whose models are scored")
    p.add_argument("--run-root", default=str(ROOT / "runs" / "reproduce"),
                   help="reproduce's --run-root (where the stages' weights are)")
    p.add_argument("--epochs", type=int, default=None,
                   help="the stage (default: the furthest one-layer stage of the file)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--k-big", type=int, default=50_000)
    p.add_argument("--n", type=int, default=500, help="the first N of the table's images")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "results" / "estimator-bias.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        table = load_stagewise(args.result)
    except ValueError as e:
        print(f"estimator_bias_study: error: {e}", file=sys.stderr)
        return 2
    epochs = args.epochs or furthest_stage(table, 1)
    cells = stage_cells(table, epochs)
    proto = table["protocol"]
    folder = Path(args.run_root) / proto["name"] / "1L" / "stages" / f"epoch-{epochs:04d}"
    if not folder.is_dir():
        print(f"estimator_bias_study: error: no saved weights of epoch {epochs} in {folder}; "
              "give reproduce's --run-root", file=sys.stderr)
        return 2
    ds = load_dataset(table["dataset"])
    x = eval_images(ds, proto["eval_n"], proto["eval_seed"])[:args.n]
    models = {}
    for obj in ("vae", "iwae"):
        rec = cells[(obj, 1, 50)]
        model, _, history = load_run(folder / rec["name"])
        if len(history) != epochs:
            raise SystemExit(f"{folder / rec['name']} is not of epoch {epochs}")
        out = {"name": rec["name"], "epochs": epochs}
        for label, k in (("small", args.k), ("big", args.k_big)):
            g = torch.Generator().manual_seed(stream_seed(0, "eval-noise"))
            t0 = time.perf_counter()
            ll = log_likelihood(model, x, k, generator=g)
            out[label] = {"k": k, "nll": float(-ll.mean()), "seconds": time.perf_counter() - t0,
                          "ll_per_image": pack_per_image(ll.tolist())}
            print(f"{rec['name']}: L_{k} = {float(ll.mean()):.3f} nats "
                  f"({out[label]['seconds']:.0f} s)", flush=True)
        models[obj] = out
    write_json_atomic(args.out, {
        "what": "L_k and L_K (K >> k) of the one-layer VAE and IWAE (k = 50) of one stage of "
                "the stage-wise Table 1, on the first n of its test images (binarized as there)",
        "study": "estimator-bias",
        "protocol": {"args": {"result": Path(args.result).name, "epochs": epochs,
                              "k": args.k, "k_big": args.k_big, "n": int(x.shape[0])},
                     "table": proto["name"], "eval_seed": proto["eval_seed"],
                     "noise": "torch.Generator seeded stream_seed(0, 'eval-noise') per L_k"},
        "models": models,
        "provenance": provenance(wall_seconds=time.perf_counter() - t_start,
                                 command=["python", "scripts/estimator_bias_study.py",
                                          *(argv if argv is not None else sys.argv[1:])]),
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
