"""``python -m iwae_tutorial reproduce``: Table 1 of Burda et al. (2015) with the fleet trainer.

The 12 configurations (VAE/IWAE x k in {1, 5, 50} x 1 or 2 stochastic layers) train together
in one :class:`~iwae_tutorial.fleet.Fleet`; then each is evaluated (test NLL by L_k, batched
over the 12 models by :func:`~iwae_tutorial.fleet.log_likelihood_many`) and its active units
are counted. The result goes to ``results/<dataset>-<budget>.json``.

Budgets (``--budget``):

==========  ===========================================================================
``smoke``   200 training images, 1 epoch; L_50 on 100 test images (seconds; for CI)
``book``    all training images, the first 4 epochs of the paper's schedule (stage 0:
            1 epoch at lr 1e-3, stage 1: 3 epochs at 7.2e-4); L_5000 on the first 1,000
            test images. MNIST: 32 minutes measured with ``--threads 1`` on the project's
            2-core CPU while 3-6 other jobs ran (training 27 min, evaluation 4.5 min);
            about 20 minutes of CPU time in all.
``full``    the paper: all training images, 3,280 epochs; L_5000 on all test images
``EPOCHS``  an integer: the first EPOCHS epochs of the paper's schedule on all training
            images; L_5000 on all test images
==========  ===========================================================================

The JSON records exactly what was run (n_train, epochs, schedule, eval_k, eval_n, ...) and,
per configuration, the paper's number, so that a short run is never mistaken for the paper's.

Stopping and resuming: everything lives in ``runs/reproduce/<dataset>-<budget>/``: the fleet
checkpoint (written every epoch, and mid-epoch when stopping), the finished members (one run
directory each, readable by :func:`iwae_tutorial.experiments.load_run`) and the progress of
the evaluation (written after every block of test images). Running the same command again
continues where it stopped. ``--max-minutes M`` stops cleanly before M minutes (exit status
75: "not finished, run me again"); SIGTERM or Ctrl-C stop at the end of the current step or
block, also checkpointed. So a long run can be cut into pieces of under 10 minutes::

    until python -m iwae_tutorial reproduce --dataset mnist --budget full --max-minutes 9; \\
        do [ $? -eq 75 ] || break; done

Evaluation protocol (as in the authors' code): the test images are binarized once (a fixed
Bernoulli draw, seeded by ``--eval-seed``); the active units are counted on the first 500
training images binarized once, with the threshold 0.01.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Budget", "BUDGETS", "resolve_budget", "paper_numbers", "configure_parser", "run", "main",
    "reproduce", "EXIT_NOT_FINISHED",
]

#: exit status when the run stopped early (time limit or signal) with its state saved
EXIT_NOT_FINISHED = 75
ACTIVE_UNITS_N = 500
ACTIVE_UNITS_THRESHOLD = 0.01
PAPER_EPOCHS = 3280


# ------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """How much of the paper's protocol a run does."""

    name: str
    n_train: int | None  # None: all training images
    epochs: int  # the first `epochs` epochs of the paper's schedule
    eval_k: int
    eval_n: int | None  # None: all test images
    description: str


BUDGETS: dict[str, Budget] = {
    "smoke": Budget("smoke", 200, 1, 50, 100,
                    "200 training images, 1 epoch; L_50 on 100 test images (seconds; for CI)"),
    "book": Budget("book", None, 4, 5000, 1000,
                   "all training images, the first 4 epochs of the paper's schedule (1 epoch "
                   "at lr 1e-3, 3 at 7.2e-4); L_5000 on the first 1,000 test images"),
    "full": Budget("full", None, PAPER_EPOCHS, 5000, None,
                   "the paper's protocol: all training images, 3,280 epochs; L_5000 on all "
                   "test images"),
}


def resolve_budget(text: str) -> Budget:
    """``smoke``, ``book``, ``full`` or a positive number of epochs."""
    text = str(text).strip().lower()
    if text in BUDGETS:
        return BUDGETS[text]
    try:
        epochs = int(text)
    except ValueError:
        raise ValueError(f"--budget must be smoke, book, full or a number of epochs, got "
                         f"{text!r}") from None
    if epochs < 1:
        raise ValueError(f"--budget: the number of epochs must be positive, got {epochs}")
    return Budget(str(epochs), None, epochs, 5000, None,
                  f"all training images, the first {epochs} epochs of the paper's schedule; "
                  "L_5000 on all test images unless --eval-n says otherwise")


# ------------------------------------------------------------------------------- the paper
# Table 1 of Burda et al. (2016), test NLL in nats for k = 1, 5, 50 (see REFERENCE.md).
_PAPER_NLL = {
    "mnist": {("vae", 1): (86.76, 86.47, 86.35), ("iwae", 1): (86.76, 85.54, 84.78),
              ("vae", 2): (85.33, 85.01, 84.78), ("iwae", 2): (85.33, 83.89, 82.90)},
    "omniglot": {("vae", 1): (108.11, 107.62, 107.80), ("iwae", 1): (108.11, 106.12, 104.67),
                 ("vae", 2): (107.58, 106.31, 106.30), ("iwae", 2): (107.56, 104.79, 103.38)},
}
# Active units on MNIST (REFERENCE.md marks them "to verify"); 2 layers as (h1, h2).
_PAPER_AU = {("vae", 1): ([19], [20], [20]), ("iwae", 1): ([19], [22], [25]),
             ("vae", 2): ([16, 5], [17, 5], [17, 5]), ("iwae", 2): ([16, 5], [21, 5], [26, 7])}
_KS = (1, 5, 50)


def paper_numbers(dataset: str, objective: str, k: int, n_layers: int) -> dict[str, Any]:
    """The paper's test NLL (and active units, MNIST) of one configuration, with a note on
    how comparable it is to a run on ``dataset``."""
    out: dict[str, Any] = {"nll": None, "active_units": None, "source": None,
                           "comparable": False, "note": None}
    if k not in _KS:
        out["note"] = "the paper reports k = 1, 5 and 50 only"
        return out
    i = _KS.index(k)
    key = (objective, n_layers)
    if dataset == "mnist":
        out.update(nll=_PAPER_NLL["mnist"].get(key, (None,) * 3)[i],
                   active_units=_PAPER_AU.get(key, (None,) * 3)[i],
                   source="Burda et al. (2016), Table 1 (dynamically binarized MNIST); active "
                          "units from the same table, marked 'to verify' in REFERENCE.md",
                   comparable=True,
                   note="comparable only when the run used the paper's protocol "
                        "(budget 'full')")
    elif dataset.startswith("omniglot"):
        out.update(nll=_PAPER_NLL["omniglot"].get(key, (None,) * 3)[i],
                   source="Burda et al. (2016), Table 1 (Omniglot; marked 'to verify' in "
                          "REFERENCE.md)")
        if dataset == "omniglot-burda":
            out.update(comparable=True, note="the paper's split (chardata.mat); comparable "
                                             "only with budget 'full'")
        else:
            out["note"] = (f"{dataset} is a different Omniglot split from the paper's "
                           "(chardata.mat, 'omniglot-burda'): not directly comparable")
    else:
        out["note"] = f"the paper reports no number for {dataset}"
    return out


# ------------------------------------------------------------------------------- CLI
# cli imports this module lazily, so importing from it here makes no cycle
from .cli import _add_data_args, _positive_float, _positive_int  # noqa: E402


def _budget_arg(text: str) -> str:
    try:
        return resolve_budget(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``reproduce`` options to ``p`` (the CLI's subparser, or a fresh parser)."""
    p.description = (
        "Train the 12 configurations of Table 1 (VAE/IWAE x k=1,5,50 x 1 or 2 stochastic "
        "layers) together with the fleet trainer, evaluate them, and write "
        "results/<dataset>-<budget>.json. Resumable: run the same command again to continue. "
        f"Exit status {EXIT_NOT_FINISHED}: stopped early (time limit or signal), state saved.")
    p.add_argument("--dataset", choices=("mnist", "omniglot"), default="mnist",
                   help="mnist (dynamically binarized) or omniglot (default mnist)")
    p.add_argument("--omniglot-variant", choices=("lake28", "burda"), default="lake28",
                   help="Omniglot split: lake28 (default; not the paper's split) or burda "
                        "(the paper's chardata.mat)")
    p.add_argument("--budget", type=_budget_arg, default="book",
                   help="smoke (seconds), book (default; ~20-35 min on 2 CPU cores for MNIST), "
                        "full (the paper's 3,280 epochs) or a number of epochs of the paper's "
                        "schedule on all training images")
    p.add_argument("--max-minutes", type=_positive_float, default=None, metavar="M",
                   help="stop cleanly (checkpointed) before M minutes of wall time; run the "
                        "same command again to continue")
    p.add_argument("--seed", type=int, default=0, help="seed of every configuration (default 0)")
    p.add_argument("--eval-k", type=_positive_int, default=None, metavar="K",
                   help="override the budget's number of samples of L_k")
    p.add_argument("--eval-n", type=_positive_int, default=None, metavar="N",
                   help="override the budget's number of test images (the first N)")
    p.add_argument("--eval-seed", type=int, default=0,
                   help="seed of the test binarization and of the L_k noise (default 0)")
    p.add_argument("--eval-batch-size", type=_positive_int, default=100, metavar="B",
                   help="test images per L_k batch (default 100)")
    p.add_argument("--run-root", default="runs/reproduce", metavar="DIR",
                   help="where the resumable state goes (default runs/reproduce)")
    p.add_argument("--results-dir", default="results", metavar="DIR",
                   help="where the result JSON goes (default results)")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved state of this dataset and budget and start anew")
    p.add_argument("--gemm", choices=("auto", "onednn", "bmm"), default="auto",
                   help="matrix-product kernels of the fleet on the CPU (default auto)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's malloc defaults (see iwae_tutorial.fleet.tune_malloc)")
    if not any(a.dest == "device" for a in p._actions):
        _add_data_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``reproduce`` with parsed arguments; returns the exit status (0 done,
    :data:`EXIT_NOT_FINISHED` stopped early with its state saved)."""
    import torch

    from .fleet import tune_malloc

    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    if not args.no_malloc_tuning:
        tune_malloc()
    dataset = args.dataset if args.dataset == "mnist" else f"omniglot-{args.omniglot_variant}"
    status, path = reproduce(
        dataset, args.budget,
        run_root=args.run_root, results_dir=args.results_dir,
        device=getattr(args, "device", None), max_minutes=args.max_minutes, seed=args.seed,
        eval_k=args.eval_k, eval_n=args.eval_n, eval_seed=args.eval_seed,
        eval_batch_size=args.eval_batch_size, restart=args.restart, gemm=args.gemm,
        data_dir=getattr(args, "data_dir", None),
        download=not getattr(args, "no_download", False),
        progress=not getattr(args, "no_progress", False),
        command=_command_line(),
    )
    if status == "done":
        print(f"wrote {path}")
        return 0
    print(f"stopped before the end ({status}); the state is saved. Run the same command again "
          "to continue.", file=sys.stderr)
    return EXIT_NOT_FINISHED


def main(argv: list[str] | None = None) -> int:
    """``python -m iwae_tutorial.reproduce ...`` (the same options as the CLI subcommand)."""
    p = configure_parser(argparse.ArgumentParser(prog="python -m iwae_tutorial.reproduce"))
    return run(p.parse_args(argv))


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("__main__.py", "iwae-tutorial")):
        return ["python", "-m", "iwae_tutorial", *argv[1:]]
    if argv and argv[0].endswith("reproduce.py"):
        return ["python", "-m", "iwae_tutorial.reproduce", *argv[1:]]
    return argv


def _log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the work
class _Stop:
    """SIGTERM/SIGINT during evaluation: finish the current block, save, stop."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def reproduce(
    dataset: str = "mnist",
    budget: str | Budget = "book",
    *,
    run_root: str | Path = "runs/reproduce",
    results_dir: str | Path = "results",
    device: str | None = None,
    max_minutes: float | None = None,
    seed: int = 0,
    eval_k: int | None = None,
    eval_n: int | None = None,
    eval_seed: int = 0,
    eval_batch_size: int = 100,
    eval_block: int | None = None,
    restart: bool = False,
    gemm: str = "auto",
    data_dir: str | None = None,
    download: bool = True,
    progress: bool = True,
    command: list[str] | None = None,
    ds=None,
) -> tuple[str, Path | None]:
    """Train, evaluate and write ``results_dir/<dataset>-<budget>.json``.

    Returns ``("done", path)`` or ``(reason, None)`` when it stopped early ("time limit" or
    "signal") with its state saved under ``run_root/<dataset>-<budget>/``.
    ``ds`` (an :class:`~iwae_tutorial.experiments.Dataset`) skips loading the data (tests).
    """
    import torch

    from .evaluate import active_units
    from .experiments import eval_images, load_dataset
    from .fleet import FLEET_CHECKPOINT, Fleet, log_likelihood_many, table1_configs
    from .profiles import default_device
    from .provenance import provenance, write_json_atomic
    from .train import load_checkpoint, save_checkpoint, schedule_epochs

    t_start = time.perf_counter()
    deadline = None if max_minutes is None else t_start + 60.0 * float(max_minutes)
    b = budget if isinstance(budget, Budget) else resolve_budget(budget)
    eval_k = int(eval_k or b.eval_k)
    tag = f"{dataset}-{b.name}"
    run_dir = Path(run_root) / tag
    if restart and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device else default_device()

    def left() -> float | None:
        return None if deadline is None else deadline - time.perf_counter()

    # ---- data and configurations
    if ds is None:
        _log(f"loading {dataset}")
        ds = load_dataset(dataset, root=data_dir, download=download, seed=seed)
    n_total = int(ds.x_train.shape[0])
    n_train = n_total if b.n_train is None else min(int(b.n_train), n_total)
    cfgs = table1_configs(dataset, epochs=b.epochs, n_train=None if n_train == n_total
                          else n_train, seed=seed)
    schedule = cfgs[0].schedule()
    x_train = ds.x_train[:n_train]
    n_test_total = int(ds.x_test.shape[0])
    n_eval = n_test_total if (eval_n or b.eval_n) is None else min(int(eval_n or b.eval_n),
                                                                    n_test_total)

    # ---- training (resumes from run_dir/fleet.pt)
    fleet = Fleet.from_configs(cfgs, ds, dev, gemm=gemm)
    _log(f"{tag}: training {len(cfgs)} configurations together on {n_train} images for "
         f"{b.epochs} epoch(s) on {dev} (gemm={fleet.gemm}, threads "
         f"{torch.get_num_threads()}); state in {run_dir}")
    res = fleet.fit(x_train, schedule=schedule, batch_size=cfgs[0].batch_size,
                    binarize=ds.binarize, run_dir=run_dir, max_seconds=left(), progress=progress)
    if not res.finished:
        _log(f"stopped after epoch {res.epochs_done} (mid-epoch state saved)")
        return "time limit or signal", None
    histories = res.history
    members_dir = run_dir / "members"
    fleet.save_members(members_dir, cfgs, histories)

    # ---- evaluation: L_k on the first n_eval test images, in blocks, resumable
    models = fleet.models()
    x_eval = eval_images(ds, n_eval, eval_seed)
    eval_path = run_dir / "eval.pt"
    key = {"eval_k": eval_k, "eval_n": n_eval, "eval_seed": eval_seed,
           "batch_size": eval_batch_size, "fleet_epochs": res.epochs_done}
    gens = [torch.Generator(device=dev).manual_seed(eval_seed) for _ in models]
    state: dict[str, Any] = {"key": key, "done": 0, "seconds": 0.0,
                             "ll": torch.full((len(models), n_eval), float("nan"),
                                              dtype=torch.float64)}
    if eval_path.exists():
        saved = load_checkpoint(eval_path)
        if saved.get("key") == key:
            state = saved
            for g, s in zip(gens, saved["rng"]):
                g.set_state(s)
        else:
            _log("the saved evaluation used other settings; evaluating anew")
    block = eval_block or max(eval_batch_size, 100)
    if state["done"] < n_eval:
        _log(f"evaluating L_{eval_k} on test images {state['done']}..{n_eval} "
             f"({len(models)} models at once)")
    last_block_s = 0.0
    with _Stop() as stop:
        while state["done"] < n_eval:
            rem = left()
            if stop.requested or (rem is not None and rem < 1.25 * last_block_s + 5):
                _log(f"stopped the evaluation at {state['done']}/{n_eval} test images")
                return "time limit or signal", None
            b0, b1 = state["done"], min(state["done"] + block, n_eval)
            t0 = time.perf_counter()
            ll = log_likelihood_many(models, x_eval, eval_k, batch_size=eval_batch_size,
                                     generators=gens, start=b0, stop=b1, gemm=gemm)
            state["ll"][:, b0:b1] = ll[:, b0:b1]
            last_block_s = time.perf_counter() - t0
            state.update(done=b1, seconds=state["seconds"] + last_block_s,
                         rng=[g.get_state() for g in gens])
            save_checkpoint(eval_path, state)
            if progress:
                _log(f"  L_{eval_k}: {b1}/{n_eval} test images ({last_block_s:.1f} s for this "
                     "block)")

    # ---- active units: first 500 training images, binarized once (the authors' code)
    t0 = time.perf_counter()
    au = []
    n_au = min(ACTIVE_UNITS_N, n_total)
    for m in models:
        g = torch.Generator(device=dev).manual_seed(eval_seed + 1)
        x_au = ds.x_train[:n_au].to(dev)
        if ds.binarize:
            x_au = torch.bernoulli(x_au, generator=g)
        au.append(active_units(m, x_au, ACTIVE_UNITS_THRESHOLD, generator=g).counts)
    t_au = time.perf_counter() - t0

    # ---- the result file
    train_s = float(sum(h["seconds"] for h in histories[0]))
    nll = -state["ll"]  # [M, n_eval]
    configurations = []
    for i, c in enumerate(cfgs):
        h = histories[i]
        v = nll[i]
        paper = paper_numbers(dataset, c.objective, c.k, len(c.layers))
        mean = float(v.mean())
        configurations.append({
            "name": c.name,
            "objective": c.objective,
            "k": c.k,
            "stochastic_layers": len(c.layers),
            "layers": c.layers,
            "seed": c.seed,
            "nll": mean,
            "nll_stderr": float(v.std() / math.sqrt(len(v))) if len(v) > 1 else None,
            "eval_k": eval_k,
            "eval_n": n_eval,
            "active_units": list(au[i]),
            "active_units_total": int(sum(au[i])),
            "train_bound": float(h[-1]["train_bound"]),
            "train_bound_per_epoch": [float(e["train_bound"]) for e in h],
            "epochs": int(h[-1]["epoch"]),
            "wall_time_s": {"train": train_s, "eval_nll": float(state["seconds"]),
                            "note": "the 12 configurations train and are evaluated together; "
                                    "these are the fleet's times, shared by all of them"},
            "paper": paper,
            "gap_to_paper_nll": (mean - paper["nll"]) if paper["nll"] is not None else None,
            "run_dir": str(members_dir / c.name),
        })
    is_paper = (n_train == n_total and b.epochs == PAPER_EPOCHS and eval_k == 5000
                and n_eval == n_test_total)
    result = {
        "dataset": dataset,
        "budget": b.name,
        "status": "complete",
        "protocol": {
            "budget_definition": b.description,
            "is_paper_protocol": is_paper,
            "n_train": n_train,
            "n_train_total": n_total,
            "epochs": b.epochs,
            "paper_epochs": PAPER_EPOCHS,
            "schedule": [asdict(s) for s in schedule],
            "batch_size": cfgs[0].batch_size,
            "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-4)",
            "binarization": "dynamic (fresh Bernoulli draw per use)" if ds.binarize
                            else "none",
            "eval_k": eval_k,
            "eval_n": n_eval,
            "eval_n_total": n_test_total,
            "eval_subset": ("all test images" if n_eval == n_test_total
                            else f"the first {n_eval} of the {n_test_total} test images"),
            "eval_seed": eval_seed,
            "test_binarization": (f"one fixed Bernoulli draw (CPU generator seed {eval_seed})"
                                  if ds.binarize else "none"),
            "active_units": {"n": n_au, "threshold": ACTIVE_UNITS_THRESHOLD,
                             "data": f"the first {n_au} training images, binarized once "
                                     f"(seed {eval_seed + 1}); layer 2 conditioned on one "
                                     "sample of layer 1"},
            "seed": seed,
        },
        "configurations": configurations,
        "wall_time_s": {"train": train_s, "eval_nll": float(state["seconds"]),
                        "active_units": t_au, "this_invocation": time.perf_counter() - t_start},
        "trainer": {"module": "iwae_tutorial.fleet", "gemm": fleet.gemm,
                    "cuda_graph": dev.type == "cuda", "torch_threads": torch.get_num_threads(),
                    "checkpoint": str(run_dir / FLEET_CHECKPOINT)},
        "provenance": provenance(command=command, device=dev,
                                 wall_seconds=time.perf_counter() - t_start),
    }
    assert schedule_epochs(schedule) == b.epochs
    path = write_json_atomic(Path(results_dir) / f"{tag}.json", result)
    _print_table(result)
    return "done", path


def _print_table(result: dict) -> None:
    p = result["protocol"]
    print(f"{result['dataset']} / budget {result['budget']}: {p['n_train']} training images, "
          f"{p['epochs']} epochs; NLL = -L_{p['eval_k']} on {p['eval_subset']}")
    print(f"{'configuration':28s} {'NLL':>8s} {'paper':>7s} {'train bound':>12s} "
          "active units")
    for c in result["configurations"]:
        paper = c["paper"]["nll"]
        print(f"{c['name']:28s} {c['nll']:8.2f} {paper if paper is not None else '-':>7} "
              f"{c['train_bound']:12.2f} {c['active_units']}")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
