"""Train the models the chapters show, and write them into the package (float16, with metadata).

    python scripts/train_shipped_models.py              # ~1-1.5 h on one CPU core
    python scripts/train_shipped_models.py --only camel # one group (latent2d, k5, camel)

Groups (each trained as the chapter configures it, only longer):

- ``latent2d``: chapter 3's 2-D latent pair, VAE and IWAE, k = 50, 784-200-200-2, all 59,600
  training images, the first ``--epochs-2d`` epochs of the paper's schedule;
- ``k5``: chapter 4's one-layer pair (the paper's 200-200-50), VAE and IWAE, k = 5, the first
  ``--epochs-k5`` epochs;
- ``camel``: chapter 2's camel models, VAE (k = 1) and IWAE (k = 20), 5-5-1, seeds 0-4,
  ``--epochs-camel`` epochs.

Every model is trained into ``runs/shipped/<name>/`` (resumable: rerun the command after a
stop), then written to ``src/iwae_tutorial/trained/<name>.pt`` (the weights in float16 with
the model's configuration) and ``<name>.json`` (configuration, epochs, data, test NLL by
L_5000 of the float32 and of the stored float16 weights on the same test images with the same
noise, command, commit, date, device, wall time). It checks that the two NLLs agree within
0.05 nats and refuses to write the model otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from iwae_tutorial.checkpoints import save_tensors, write_json_atomic
from iwae_tutorial.data import load_dataset
from iwae_tutorial.evaluate import eval_images, log_likelihood
from iwae_tutorial.fleet import Fleet
from iwae_tutorial.fleet.stacked import tune_malloc
from iwae_tutorial.paper import ONE_LAYER
from iwae_tutorial.provenance import provenance
from iwae_tutorial.results import model_record
from iwae_tutorial.runs import SHIPPED_DIR, RunConfig, load_run, train_run

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05  # nats: float16 storage may not change the test NLL by more


def groups(args) -> dict[str, list[tuple[str, RunConfig]]]:
    def cfg(**kw) -> RunConfig:
        return RunConfig(**kw)

    return {
        "latent2d": [(f"latent2d-{o}-k50", cfg(objective=o, k=50, layers=[[200, 200, 2]],
                                               epochs=args.epochs_2d))
                     for o in ("vae", "iwae")],
        "k5": [(f"mnist-{o}-k5-1L", cfg(objective=o, k=5, layers=[list(s) for s in ONE_LAYER],
                                        epochs=args.epochs_k5))
               for o in ("vae", "iwae")],
        "camel": [(f"camel-{o}-k{k}-s{s}", cfg(dataset="camel", objective=o, k=k,
                                               layers=[[5, 5, 1]], epochs=args.epochs_camel,
                                               seed=s))
                  for s in range(5) for o, k in (("vae", 1), ("iwae", 20))],
    }


def train_group(name: str, members: list[tuple[str, RunConfig]], run_root: Path
                ) -> dict[str, Path]:
    """Train one group; -> {model name: its run directory}. MNIST pairs train together in
    one fleet (resumable), camel models one by one (resumable)."""
    if members[0][1].dataset == "camel":
        for run_name, c in members:
            ds = load_dataset("camel", seed=c.seed)
            train_run(c, run_dir=run_root / run_name, device="cpu", ds=ds, progress=False)
        return {run_name: run_root / run_name for run_name, _ in members}
    ds = load_dataset(members[0][1].dataset)
    cfgs = [c for _, c in members]
    fleet = Fleet.from_configs(cfgs, ds, "cpu")
    res = fleet.fit(ds.x_train, schedule=cfgs[0].schedule(), batch_size=cfgs[0].batch_size,
                    run_dir=run_root / name, progress=True)
    if not res.finished:  # a signal: the fleet saved its state; rerun to continue
        raise SystemExit(f"{name}: stopped after epoch {res.epochs_done} (state saved); run "
                         "the same command again to continue")
    fleet.save_members(run_root / name / "members", cfgs, res.history)
    return {run_name: run_root / name / "members" / member
            for (run_name, _), member in zip(members, fleet.names)}


def export(run_name: str, run_dir: Path, out_dir: Path, eval_n: int, eval_k: int,
           command: list[str], t_train: float) -> dict:
    model, cfg, history = load_run(run_dir)
    ds = load_dataset(cfg.dataset, seed=cfg.seed)
    x = eval_images(ds, eval_n, seed=0)
    half = {k: v.half() for k, v in model.state_dict().items()}
    stored = type(model)(model.x_dim, model.layers, likelihood=model.likelihood)
    stored.load_state_dict({k: v.float() for k, v in half.items()})
    stored.eval()
    nll = {}
    t0 = time.perf_counter()
    for label, m in (("float32", model), ("float16", stored)):
        g = torch.Generator().manual_seed(0)
        nll[label] = -log_likelihood(m, x, eval_k, generator=g)
    t_eval = time.perf_counter() - t0
    diff = float((nll["float16"].mean() - nll["float32"].mean()).abs())
    if diff > TOLERANCE:
        raise SystemExit(f"{run_name}: float16 storage changes the test NLL by {diff:.3f} "
                         f"nats (> {TOLERANCE}); not written")
    n = x.shape[0]
    evaluation = {  # the one schema's evaluation fields (no active units counted here)
        "nll": float(nll["float16"].mean()),
        "nll_stderr": float(nll["float16"].std() / n ** 0.5),
        "eval_k": eval_k, "eval_n": n, "eval_n_total": int(ds.x_test.shape[0]),
        "eval_subset": f"the first {n} of the {ds.x_test.shape[0]} test points"
                       + (", binarized once (seed 0)" if ds.binarize else ""),
    }
    meta = model_record(
        cfg, ds.name, history, evaluation,
        name=run_name, storage="float16 weights (IWAE state dict), read back as float32",
        nll_float32=float(nll["float32"].mean()),
        float16_minus_float32_nats=float(nll["float16"].mean() - nll["float32"].mean()),
        wall_time_s={"train_all_sessions": sum(h["seconds"] for h in history),
                     "train_this_session": t_train, "eval_nll": t_eval},
        provenance=provenance(command=command, device="cpu"))
    save_tensors(out_dir / f"{run_name}.pt", {"model": half, "model_config": model.config})
    write_json_atomic(out_dir / f"{run_name}.json", meta)
    print(f"{run_name}: {len(history)} epochs, test NLL {meta['nll']:.3f} "
          f"(float32 {meta['nll_float32']:.3f})", file=sys.stderr)
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=("latent2d", "k5", "camel"), default=None)
    p.add_argument("--epochs-2d", type=int, default=30)
    p.add_argument("--epochs-k5", type=int, default=100)
    p.add_argument("--epochs-camel", type=int, default=40)
    p.add_argument("--eval-n", type=int, default=2000, help="test images for L_5000")
    p.add_argument("--eval-k", type=int, default=5000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-root", default=str(ROOT / "runs" / "shipped"))
    p.add_argument("--out", default=str(SHIPPED_DIR))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_malloc()
    command = ["python", "scripts/train_shipped_models.py",
               *(argv if argv is not None else sys.argv[1:])]
    run_root, out_dir = Path(args.run_root), Path(args.out)
    for name, members in groups(args).items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        dirs = train_group(name, members, run_root)
        t_train = time.perf_counter() - t0
        for run_name, run_dir in dirs.items():
            export(run_name, run_dir, out_dir, args.eval_n, args.eval_k, command, t_train)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
