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

import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .schedule import PAPER_EPOCHS, schedule_epochs

if TYPE_CHECKING:
    import torch

__all__ = [
    "Budget", "BUDGETS", "resolve_budget", "paper_numbers", "reproduce", "EXIT_NOT_FINISHED",
]

#: exit status when the run stopped early (time limit or signal) with its state saved
EXIT_NOT_FINISHED = 75


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


def _log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- the work
def reproduce(
    dataset: str = "mnist",
    budget: str | Budget = "book",
    *,
    run_root: str | Path = "runs/reproduce",
    results_dir: str | Path = "results",
    device: str | torch.device | None = None,
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
    from .checkpoints import RunDirLock

    t_start = time.perf_counter()
    b = budget if isinstance(budget, Budget) else resolve_budget(budget)
    run_dir = Path(run_root) / f"{dataset}-{b.name}"
    with RunDirLock(run_dir, "--run-root"):  # one process at a time
        if restart:  # everything but the lock we hold
            for p in run_dir.iterdir():
                if p.name != RunDirLock.NAME:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        return _reproduce(dataset, b, run_dir, t_start, results_dir=results_dir,
                          device=device, max_minutes=max_minutes, seed=seed, eval_k=eval_k,
                          eval_n=eval_n, eval_seed=eval_seed, eval_batch_size=eval_batch_size,
                          eval_block=eval_block, gemm=gemm, data_dir=data_dir,
                          download=download, progress=progress, command=command, ds=ds)


def _reproduce(dataset: str, b: Budget, run_dir: Path, t_start: float, *, results_dir,
               device, max_minutes, seed, eval_k, eval_n, eval_seed, eval_batch_size,
               eval_block, gemm, data_dir, download, progress, command,
               ds) -> tuple[str, Path | None]:
    import torch

    from .checkpoints import load_tensors, save_tensors, write_json_atomic
    from .evaluate import ACTIVE_UNITS_THRESHOLD, paper_active_units
    from .experiments import eval_images, load_dataset
    from .fleet import FLEET_CHECKPOINT, Fleet, StopFlag, log_likelihood_many, table1_configs
    from .profiles import default_device
    from .provenance import provenance

    deadline = None if max_minutes is None else t_start + 60.0 * float(max_minutes)
    eval_k = int(eval_k or b.eval_k)
    tag = run_dir.name
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
        saved = load_tensors(eval_path, what="saved evaluation",
                             fix="delete it to redo the evaluation (the training is kept)")
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
    with StopFlag() as stop:
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
            save_tensors(eval_path, state)
            if progress:
                _log(f"  L_{eval_k}: {b1}/{n_eval} test images ({last_block_s:.1f} s for this "
                     "block)")

    # ---- active units: first 500 training images, binarized once (the authors' code)
    t0 = time.perf_counter()
    au = []
    for m in models:
        counted, n_au = paper_active_units(m, ds.x_train, ds.binarize, eval_seed)
        au.append(counted.counts)
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


