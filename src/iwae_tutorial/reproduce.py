"""``python -m iwae_tutorial reproduce``: Table 1 of Burda et al. (2015) with the fleet trainer.

The 12 configurations (VAE/IWAE x k in {1, 5, 50} x 1 or 2 stochastic layers) train together
in one :class:`~iwae_tutorial.fleet.Fleet`; then each is evaluated (test NLL by L_k, batched
over the 12 models by :func:`~iwae_tutorial.evaluate.log_likelihood_many`) and its active units
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
directory each, readable by :func:`iwae_tutorial.runs.load_run`) and the progress of
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

import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paper import EVAL_K, PAPER_EPOCHS
from .schedule import PAPER_BATCH, lr_scale_for_batch, schedule_epochs

if TYPE_CHECKING:
    import torch

__all__ = [
    "Budget", "BUDGETS", "resolve_budget", "reproduce", "EXIT_NOT_FINISHED",
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
    "book": Budget("book", None, 4, EVAL_K, 1000,
                   "all training images, the first 4 epochs of the paper's schedule (1 epoch "
                   "at lr 1e-3, 3 at 7.2e-4); L_5000 on the first 1,000 test images"),
    "full": Budget("full", None, PAPER_EPOCHS, EVAL_K, None,
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
    return Budget(str(epochs), None, epochs, EVAL_K, None,
                  f"all training images, the first {epochs} epochs of the paper's schedule; "
                  "L_5000 on all test images unless --eval-n says otherwise")


def protocol_tag(dataset: str, budget: str, batch_size: int = PAPER_BATCH,
                 trainer: str = "exact", tf32: bool = False) -> str:
    """The name of a run and of its result file: ``<dataset>-<budget>`` plus what differs
    from the paper's protocol (``-b<batch>``, ``-fast``, ``-tf32``)."""
    tag = f"{dataset}-{budget}"
    if batch_size != PAPER_BATCH:
        tag += f"-b{batch_size}"
    if trainer != "exact":
        tag += f"-{trainer}"
    if tf32:
        tag += "-tf32"
    return tag


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
    batch_size: int = 20,
    trainer: str = "exact",
    tf32: bool = False,
    verbose: bool = True,
) -> tuple[str, Path | None]:
    """Train, evaluate and write ``results_dir/<dataset>-<protocol>.json``.

    The protocol is the budget, then what differs from the paper's: ``-b<batch_size>`` for a
    batch other than 20 (its learning rates scaled by ``schedule.lr_scale_for_batch``),
    ``-fast`` for the fast trainer (:mod:`iwae_tutorial.fast`: counter-based noise, CUDA-graph
    blocks) instead of the exact one, ``-tf32`` for TF32 matrix products on CUDA.

    Returns ``("done", path)`` or ``(reason, None)`` when it stopped early ("time limit" or
    "signal") with its state saved under ``run_root/<dataset>-<budget>/``.
    ``ds`` (an :class:`~iwae_tutorial.experiments.Dataset`) skips loading the data (tests).
    """
    import torch

    from .checkpoints import RunDirLock, write_json_atomic
    from .experiments import load_dataset
    from .profiles import default_device

    t_start = time.perf_counter()
    b = budget if isinstance(budget, Budget) else resolve_budget(budget)
    if trainer not in ("exact", "fast"):
        raise ValueError(f"trainer must be 'exact' or 'fast', got {trainer!r}")
    run_dir = Path(run_root) / protocol_tag(dataset, b.name, batch_size, trainer, tf32)
    with RunDirLock(run_dir, "--run-root"):  # one process at a time
        if restart:  # everything but the lock we hold
            for p in run_dir.iterdir():
                if p.name != RunDirLock.NAME:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        if ds is None:
            if verbose:
                _log(f"loading {dataset}")
            ds = load_dataset(dataset, root=data_dir, download=download, seed=seed)
        n_total, n_test = int(ds.x_train.shape[0]), int(ds.x_test.shape[0])
        want_eval = eval_n or b.eval_n
        run = _Run(dataset=dataset, budget=b, run_dir=run_dir, ds=ds,
                   device=torch.device(device) if device else default_device(),
                   n_train=n_total if b.n_train is None else min(int(b.n_train), n_total),
                   n_eval=n_test if want_eval is None else min(int(want_eval), n_test),
                   eval_k=int(eval_k or b.eval_k), eval_seed=eval_seed,
                   eval_batch_size=eval_batch_size,
                   eval_block=eval_block or max(eval_batch_size, 100), seed=seed, gemm=gemm,
                   progress=progress, batch_size=batch_size, trainer=trainer, tf32=tf32,
                   verbose=verbose,
                   deadline=None if max_minutes is None else t_start + 60.0 * max_minutes)
        trained = _train_stage(run)
        if trained is None:
            return "time limit or signal", None
        fleet, cfgs, histories = trained
        evaluated = _eval_stage(run, fleet.models(), fleet_epochs=len(histories[0]))
        if evaluated is None:
            return "time limit or signal", None
        result = _result(run, fleet, cfgs, histories, evaluated, t_start, command)
        path = write_json_atomic(Path(results_dir) / f"{run_dir.name}.json", result)
    if verbose:
        _print_table(result)
    return "done", path


@dataclass
class _Run:
    """What one ``reproduce`` invocation works on (resolved from its arguments)."""

    dataset: str
    budget: Budget
    run_dir: Path
    ds: Any  # experiments.Dataset
    device: Any  # torch.device
    n_train: int
    n_eval: int
    eval_k: int
    eval_seed: int
    eval_batch_size: int
    eval_block: int
    seed: int
    gemm: str
    progress: bool
    batch_size: int
    trainer: str
    tf32: bool
    verbose: bool

    def log(self, msg: str) -> None:
        """A progress line on stderr (off with ``verbose=False``, e.g. in the built book)."""
        if self.verbose:
            _log(msg)
    deadline: float | None

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    @property
    def is_paper_protocol(self) -> bool:
        return (self.n_train == self.ds.x_train.shape[0] and self.budget.epochs == PAPER_EPOCHS
                and self.eval_k == EVAL_K and self.n_eval == self.ds.x_test.shape[0]
                and self.batch_size == PAPER_BATCH and not self.tf32)


def _train_stage(run: _Run):
    """Train the 12 configurations together (resuming from ``run_dir/fleet.pt``) and write
    each as a run directory under ``run_dir/members``. -> (fleet, configs, histories), or
    None when it stopped early (state saved)."""
    import torch

    from .fast import fit_fast
    from .fleet import Fleet, table1_configs

    n_total = int(run.ds.x_train.shape[0])
    cfgs = table1_configs(run.dataset, epochs=run.budget.epochs, seed=run.seed,
                          n_train=None if run.n_train == n_total else run.n_train,
                          batch_size=run.batch_size,
                          lr_scale=lr_scale_for_batch(run.batch_size))
    if run.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = run.tf32
        torch.backends.cudnn.allow_tf32 = run.tf32
    fleet = Fleet.from_configs(cfgs, run.ds, run.device, gemm=run.gemm)
    run.log(f"{run.run_dir.name}: training {len(cfgs)} configurations together on "
         f"{run.n_train} images for {run.budget.epochs} epoch(s), batch {run.batch_size}, "
         f"{run.trainer} trainer, on {run.device} (gemm={fleet.gemm}, threads "
         f"{torch.get_num_threads()}); state in {run.run_dir}")
    fit = fleet.fit if run.trainer == "exact" else partial(fit_fast, fleet)
    res = fit(run.ds.x_train[:run.n_train], schedule=cfgs[0].schedule(),
              batch_size=cfgs[0].batch_size, binarize=run.ds.binarize,
              run_dir=run.run_dir, max_seconds=run.seconds_left(), progress=run.progress)
    if not res.finished:
        run.log(f"stopped after epoch {res.epochs_done} (mid-epoch state saved)")
        return None
    fleet.save_members(run.run_dir / "members", cfgs, res.history)
    return fleet, cfgs, res.history


def _eval_stage(run: _Run, models: list, fleet_epochs: int) -> dict | None:
    """L_k of every model on the first ``n_eval`` test images, in blocks, resumable from
    ``run_dir/eval.pt``. -> {"ll": [M, n_eval] float64, "seconds": ...}, or None when it
    stopped early (state saved)."""
    import torch

    from .checkpoints import load_tensors, save_tensors
    from .evaluate import log_likelihood_many
    from .experiments import eval_images
    from .fleet import StopFlag

    x_eval = eval_images(run.ds, run.n_eval, run.eval_seed)
    eval_path = run.run_dir / "eval.pt"
    key = {"eval_k": run.eval_k, "eval_n": run.n_eval, "eval_seed": run.eval_seed,
           "batch_size": run.eval_batch_size, "fleet_epochs": fleet_epochs}
    gens = [torch.Generator(device=run.device).manual_seed(run.eval_seed) for _ in models]
    state: dict[str, Any] = {"key": key, "done": 0, "seconds": 0.0,
                             "ll": torch.full((len(models), run.n_eval), float("nan"),
                                              dtype=torch.float64)}
    if eval_path.exists():
        saved = load_tensors(eval_path, what="saved evaluation",
                             fix="delete it to redo the evaluation (the training is kept)")
        if saved.get("key") == key:
            state = saved
            for g, s in zip(gens, saved["rng"]):
                g.set_state(s)
        else:
            run.log("the saved evaluation used other settings; evaluating anew")
    if state["done"] < run.n_eval:
        run.log(f"evaluating L_{run.eval_k} on test images {state['done']}..{run.n_eval} "
             f"({len(models)} models at once)")
    last_block_s = 0.0
    with StopFlag() as stop:
        while state["done"] < run.n_eval:
            rem = run.seconds_left()
            if stop.requested or (rem is not None and rem < 1.25 * last_block_s + 5):
                run.log(f"stopped the evaluation at {state['done']}/{run.n_eval} test images")
                return None
            b0, b1 = state["done"], min(state["done"] + run.eval_block, run.n_eval)
            t0 = time.perf_counter()
            ll = log_likelihood_many(models, x_eval, run.eval_k,
                                     batch_size=run.eval_batch_size, generators=gens,
                                     start=b0, stop=b1, gemm=run.gemm,
                                     max_rows=400_000 if run.device.type == "cuda" else 8_000)
            state["ll"][:, b0:b1] = ll[:, b0:b1]
            last_block_s = time.perf_counter() - t0
            state.update(done=b1, seconds=state["seconds"] + last_block_s,
                         rng=[g.get_state() for g in gens])
            save_tensors(eval_path, state)
            if run.progress:
                run.log(f"  L_{run.eval_k}: {b1}/{run.n_eval} test images ({last_block_s:.1f} s "
                     "for this block)")
    return state


def _result(run: _Run, fleet, cfgs: list, histories: list, evaluated: dict, t_start: float,
            command: list[str] | None) -> dict[str, Any]:
    """The table file: the protocol, one record per configuration (the one result schema,
    :func:`iwae_tutorial.results.model_record`), wall times, trainer and provenance."""
    import torch

    from .evaluate import ACTIVE_UNITS_THRESHOLD, paper_active_units
    from .experiments import eval_subset_text
    from .fast import STATE_DIR
    from .fleet import FLEET_CHECKPOINT
    from .provenance import provenance
    from .results import evaluation_fields, model_record

    ds = run.ds
    t0 = time.perf_counter()
    counted = [paper_active_units(m, ds.x_train, ds.binarize, run.eval_seed)
               for m in fleet.models()]
    t_au = time.perf_counter() - t0
    n_au = counted[0][1]
    train_s = float(sum(h["seconds"] for h in histories[0]))
    shared_s = {"train": train_s, "eval_nll": float(evaluated["seconds"]),
                "note": "the 12 configurations train and are evaluated together; these are "
                        "the fleet's times, shared by all of them"}
    n_test_total = int(ds.x_test.shape[0])
    configurations = [
        model_record(asdict(c), run.dataset, histories[i],
                     evaluation_fields(evaluated["ll"][i], k=run.eval_k, n_total=n_test_total,
                                       seed=run.eval_seed, binarized=ds.binarize,
                                       active_units=counted[i][0], active_units_n=n_au,
                                       threshold=ACTIVE_UNITS_THRESHOLD,
                                       subset=eval_subset_text(ds, run.n_eval)),
                     wall_time_s=shared_s, run_dir=str(run.run_dir / "members" / c.name))
        for i, c in enumerate(cfgs)]
    schedule = cfgs[0].schedule()
    assert schedule_epochs(schedule) == run.budget.epochs
    first = configurations[0]
    return {
        "dataset": run.dataset,
        "budget": run.budget.name,
        "status": "complete",
        "protocol": {
            "budget_definition": run.budget.description,
            "is_paper_protocol": run.is_paper_protocol,
            "n_train": run.n_train,
            "n_train_total": int(ds.x_train.shape[0]),
            "epochs": run.budget.epochs,
            "paper_epochs": PAPER_EPOCHS,
            "schedule": [asdict(s) for s in schedule],
            "batch_size": cfgs[0].batch_size,
            "lr_scale": cfgs[0].lr_scale,
            "trainer": run.trainer,
            "noise": ("each member's own torch.Generator, as train.fit (exact)"
                      if run.trainer == "exact" else
                      "counter-based, a hash of (seed, step) (iwae_tutorial.noise)"),
            "precision": "tf32 matmuls" if run.tf32 else "float32",
            "name": protocol_tag(run.dataset, run.budget.name, run.batch_size, run.trainer,
                                 run.tf32),
            "optimizer": "Adam(betas=(0.9, 0.999), eps=1e-4)",
            "binarization": "dynamic (fresh Bernoulli draw per use)" if ds.binarize
                            else "none",
            **{key: first[key] for key in ("eval_k", "eval_n", "eval_n_total", "eval_subset",
                                           "eval_seed", "test_binarization")},
            "active_units": {"n": n_au, "threshold": ACTIVE_UNITS_THRESHOLD,
                             "data": f"the first {n_au} training images, binarized once "
                                     f"(seed {run.eval_seed + 1}); layer 2 conditioned on one "
                                     "sample of layer 1"},
            "seed": run.seed,
        },
        "configurations": configurations,
        "wall_time_s": {"train": train_s, "eval_nll": float(evaluated["seconds"]),
                        "active_units": t_au, "this_invocation": time.perf_counter() - t_start},
        "trainer": {"module": "iwae_tutorial.fleet" if run.trainer == "exact"
                    else "iwae_tutorial.fast", "gemm": fleet.gemm,
                    "cuda_graph": run.device.type == "cuda",
                    "torch_threads": torch.get_num_threads(),
                    "checkpoint": str(run.run_dir / (FLEET_CHECKPOINT if run.trainer == "exact"
                                                     else STATE_DIR))},
        "provenance": provenance(command=command, device=run.device,
                                 wall_seconds=time.perf_counter() - t_start),
    }


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


