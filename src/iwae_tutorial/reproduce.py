"""``python -m iwae_tutorial reproduce``: Table 1 of Burda et al. (2015) with the fleet trainer.

The 12 configurations (VAE/IWAE x k in {1, 5, 50} x 1 or 2 stochastic layers) train as two
fleets (:class:`~iwae_tutorial.fleet.Fleet`, one per number of stochastic layers); at each
stage end each model is evaluated (test NLL by L_k, batched over a fleet's models by
:func:`~iwae_tutorial.evaluate.log_likelihood_many`) and its active units are counted. The
result goes to ``results/<protocol>.json`` (:func:`~iwae_tutorial.budgets.protocol_tag`).

Budgets (``--budget``): :mod:`iwae_tutorial.budgets`.

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

``torchrun --nproc-per-node W -m iwae_tutorial reproduce ...`` (W <= 3; gloo or NCCL): each rank
trains and scores its share of each fleet in ``<run>/rank-R-of-W/`` (resumable; a stopped rank
exits with 75, torchrun then with 1); rank 0 writes the one result file, with a single
process's numbers bit for bit (:mod:`iwae_tutorial.distributed`).

Evaluation protocol (as in the authors' code): the test images are binarized once (a fixed
Bernoulli draw, seeded by ``--eval-seed``); the active units are counted on the first 500
training images binarized once, with the threshold 0.01.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .budgets import BUDGETS, FAST_MOMENTS, Budget, protocol_tag, resolve_budget
from .distributed import Ranks
from .pacing import log_estimate, matmul_precision, stage_fits
from .paper import EVAL_K, PAPER_EPOCHS, TABLE1_KS
from .schedule import PAPER_BATCH, lr_scale_for_batch
from .stopping import StopFlag
from .tablefile import now_utc, result_file, stage_key

if TYPE_CHECKING:
    import torch

__all__ = [
    "Budget", "BUDGETS", "resolve_budget", "reproduce", "EXIT_NOT_FINISHED", "TRAINERS",
    "FAST_MOMENTS",
]

#: exit status when the run stopped early (time limit or signal) with its state saved
EXIT_NOT_FINISHED = 75
#: exact: Fleet.fit; fast: fast.fit_fast with counter-based noise; fast-device: fit_fast with
#: the device's generator (one kernel per draw). The fast trainers save Adam's moments in
#: bfloat16 so that the state travels with a device command.
TRAINERS = ("exact", "fast", "fast-device")


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
    two_layer_epochs: int | None = None,
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
    force: bool = False,
    until_epochs: int | None = None,
    whole_stages: bool = False,
    epoch_seconds_hint: float | None = None,
    ranks: Ranks | None = None,
) -> tuple[str, Path | None]:
    """Train, evaluate at the end of every stage of the schedule, and write
    ``results_dir/<dataset>-<protocol>.json`` after each evaluated stage.

    The protocol is the budget, then what differs from the paper's: ``-2L<E>`` when
    ``two_layer_epochs`` stops the two-layer cells after E epochs, ``-b<batch_size>`` for a
    batch other than 20 (its learning rates scaled by ``schedule.lr_scale_for_batch``),
    ``-fast`` for the fast trainer (:mod:`iwae_tutorial.fleet.fast`: counter-based noise, CUDA-graph
    blocks) instead of the exact one, ``-tf32`` for TF32 matrix products on CUDA.

    The one-layer and the two-layer cells train as two fleets; the IWAE with k = 1 is the VAE
    with k = 1 (the bounds are equal), so it is trained once and recorded twice. At the end of
    each stage of the paper's schedule (1, 4, 13, 40, 121, ... epochs, and the last epoch of
    the budget) the members' weights are saved (``<run>/<part>/stages/epoch-EEEE/``, run
    directories readable by :func:`iwae_tutorial.runs.load_run`) and scored from those saved
    weights: L_k of every model on the same test images (per-image values kept, so any two
    cells can be compared image by image) and the active units. A run resumed across a stage
    boundary therefore gives the same stage results as an uninterrupted one.

    Returns ``("done", path)`` or ``(reason, None)`` when it stopped early ("time limit or
    signal") with its state saved under ``run_root/<protocol>/`` (the result file then holds
    the stages finished so far, ``"status": "partial"``). An existing result file of the same
    name written with another seed, evaluation k, test images or evaluation seed is not
    replaced unless ``force`` (a ValueError naming it, before anything is done). A score that
    is NaN or infinite is never written (a ValueError naming the file).
    ``ds`` (an :class:`~iwae_tutorial.data.Dataset`) skips loading the data (tests).

    Working in windows (a device lent for minutes): ``until_epochs`` scores the stages that
    end by that epoch and stops there (not finished: the next invocation goes on);
    ``whole_stages`` does not start a stage that the time left (``max_minutes``) cannot train
    and score, judged from the fleet's measured seconds per epoch (or
    ``epoch_seconds_hint``, seconds per epoch of one fleet, before any is measured) and its
    last scoring's seconds. Both stop with the stages so far scored and written.

    ``ranks`` (default: torchrun's environment) shares the work out; only rank 0 returns a path.
    """
    import torch

    from .checkpoints import RunDirLock
    from .data import load_dataset
    from .distributed import barrier, gather_stages, process_group, shard
    from .profiles import default_device
    from .provenance import provenance

    t_start = time.perf_counter()
    b = budget if isinstance(budget, Budget) else resolve_budget(budget)
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    if two_layer_epochs is not None:
        two_layer_epochs = int(two_layer_epochs)
        if not 1 <= two_layer_epochs:
            raise ValueError(f"--two-layer-epochs must be positive, got {two_layer_epochs}")
        if two_layer_epochs >= b.epochs:
            two_layer_epochs = None  # the whole budget: nothing differs
    tag = protocol_tag(dataset, b.name, batch_size, trainer, tf32, two_layer_epochs)
    ranks = ranks or Ranks.from_env()
    shard(TABLE1_KS, ranks)  # too many ranks (a fleet has a training group per k): say so now
    run_dir = ranks.state_dir(Path(run_root) / tag)  # a rank's own folder: its own lock
    dev = ranks.device(torch.device(device) if device else default_device())
    with (process_group(ranks, dev), RunDirLock(run_dir, "--run-root"),  # one at a time
          StopFlag() as stop):  # a signal between (or at the very end of) steps stops here too
        if ds is None:
            if verbose:
                _log(f"loading {dataset}")
            ds = load_dataset(dataset, root=data_dir, download=download, seed=seed)
        n_total, n_test = int(ds.x_train.shape[0]), int(ds.x_test.shape[0])
        want_eval = eval_n or b.eval_n
        run = Run(dataset=dataset, budget=b, run_dir=run_dir, ds=ds, device=dev,
                   n_train=n_total if b.n_train is None else min(int(b.n_train), n_total),
                   n_eval=n_test if want_eval is None else min(int(want_eval), n_test),
                   eval_k=int(eval_k or b.eval_k), eval_seed=eval_seed,
                   eval_batch_size=eval_batch_size,
                   eval_block=eval_block or max(eval_batch_size, 100), seed=seed, gemm=gemm,
                   progress=progress, batch_size=batch_size, trainer=trainer, tf32=tf32,
                   verbose=verbose, two_layer_epochs=two_layer_epochs, tag=tag,
                   deadline=None if max_minutes is None else t_start + 60.0 * max_minutes,
                   command=command, world=ranks.world, stop=stop,
                   started=json.loads(json.dumps(provenance(command=command, device=dev))))
        out_path = Path(results_dir) / f"{tag}.json"
        _check_replace(run, out_path, force)  # before anything is deleted or computed
        if restart:  # everything but the lock we hold
            for p in run_dir.iterdir():
                if p.name != RunDirLock.NAME:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        parts = _parts(run)
        mine = [_shard(part, ranks) for part in parts]  # all of them for one rank
        done = _load_done(run)
        points = sorted({e for part in parts for e in part.ends})
        finished, reason = True, "time limit or signal"
        for e in points:
            if not finished:
                break
            if until_epochs is not None and e > until_epochs:
                run.log(f"stopping after the stages that end by epoch {until_epochs}, as asked")
                finished, reason = False, f"stopped after epoch {until_epochs} as asked"
                break
            for part in mine:
                if e not in part.ends or stage_key(part, e) in done:
                    continue
                if whole_stages and not stage_fits(run, part, e, done, epoch_seconds_hint):
                    finished, reason = False, "the next stage does not fit in the time left"
                    break
                scored = None if stop.requested else _score_stage(run, part, e)
                if scored is None:
                    finished = False
                    break
                done[stage_key(part, e)] = scored
                _save_done(run, done)
                if ranks.world == 1:  # several ranks: rank 0 writes at the end (below)
                    result = result_file(run, parts, done, t_start)
                    out_path = _write_result(out_path, result)
                    run.log(f"{part.name} after {e} epoch(s): scored; {out_path} updated")
        if ranks.world > 1:  # on rank 0: the stages that every rank scored, merged
            done, finished = gather_stages(
                done, finished, ranks, per_member=("histories", "ll", "active_units",
                                                   "active_units_variances"),
                per_rank=("weights", "gemm", "seconds"), slowest=("seconds",))
        result = None
        if done and (finished or ranks.world > 1):  # several ranks: what all of them scored
            result = result_file(run, parts, done, t_start)
            out_path = _write_result(out_path, result)
        barrier(ranks)  # no rank exits before rank 0 has written
    if not finished:
        return reason, None
    if verbose and result is not None:
        from .results import table1_text

        print(table1_text(result))
    return "done", out_path if result is not None else None


def _write_result(path: Path, result: dict) -> Path:
    """Write the table file, unless a score in it is NaN or infinite (a ValueError)."""
    from .checkpoints import write_json_atomic
    from .results import check_finite_scores

    check_finite_scores(result, path)
    return write_json_atomic(path, result)


def _check_replace(run: Run, path: Path, force: bool) -> None:
    """A result file of this name but other settings is not replaced without ``force``."""
    from .results import check_replaceable

    if not force:
        check_replaceable(path, {"seed": run.seed, "eval_k": run.eval_k, "eval_n": run.n_eval,
                                 "eval_seed": run.eval_seed, "n_train": run.n_train})


@dataclass
class Run:
    """What one ``reproduce`` invocation works on (resolved from its arguments)."""

    dataset: str
    budget: Budget
    run_dir: Path
    ds: Any  # data.Dataset
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
    two_layer_epochs: int | None
    tag: str
    deadline: float | None
    command: list[str] | None
    started: dict  # provenance at the start of this invocation (the code that runs)
    world: int = 1  # the number of ranks (torchrun)
    stop: Any = None  # the invocation's StopFlag (SIGTERM/SIGINT requested a stop)

    def log(self, msg: str) -> None:
        """A progress line on stderr (off with ``verbose=False``, e.g. in the built book)."""
        if self.verbose:
            _log(msg)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()

    @property
    def is_paper_protocol(self) -> bool:
        return (self.n_train == self.ds.x_train.shape[0] and self.budget.epochs == PAPER_EPOCHS
                and self.eval_k == EVAL_K and self.n_eval == self.ds.x_test.shape[0]
                and self.batch_size == PAPER_BATCH and not self.tf32
                and self.two_layer_epochs is None)


@dataclass
class Part:
    """The cells with one number of stochastic layers: trained together as one fleet."""

    name: str  # "1L", "2L"
    configs: list  # RunConfig of the trained members
    epochs: int
    ends: list[int]  # epochs after which the members are scored
    aliases: dict  # name of an untrained cell -> (its RunConfig, the trained member's index)
    members: list[int] | None = None  # a rank's share: its configs' indices in the fleet's
    fleet_size: int | None = None  # a rank's share: the number of configs in the whole fleet

    def run_dir(self, run: Run) -> Path:
        return run.run_dir / self.name

    def stage_dir(self, run: Run, epochs: int) -> Path:
        return self.run_dir(run) / "stages" / f"epoch-{epochs:04d}"


def _parts(run: Run) -> list[Part]:
    """The 12 configurations of Table 1 as two fleets (one per number of stochastic layers);
    the IWAE with k = 1 is an alias of the VAE with k = 1."""
    from .fleet import table1_configs
    from .schedule import burda_schedule, stage_ends, truncate_schedule

    n_total = int(run.ds.x_train.shape[0])
    cfgs = table1_configs(run.dataset, epochs=run.budget.epochs, seed=run.seed,
                          n_train=None if run.n_train == n_total else run.n_train,
                          batch_size=run.batch_size,
                          lr_scale=lr_scale_for_batch(run.batch_size))
    parts = []
    for n_layers in (1, 2):
        mine = [c for c in cfgs if len(c.layers) == n_layers]
        trained = [c for c in mine if not (c.objective == "iwae" and c.k == 1)]
        aliases = {}
        for c in mine:
            if c.objective == "iwae" and c.k == 1:
                twin = next(i for i, t in enumerate(trained) if t.objective == "vae" and t.k == 1)
                aliases[c.name] = (c, twin)
        epochs = run.budget.epochs
        if n_layers == 2 and run.two_layer_epochs is not None:
            epochs = min(epochs, run.two_layer_epochs)
        ends = stage_ends(truncate_schedule(burda_schedule(), epochs))
        parts.append(Part(f"{n_layers}L", trained, epochs, ends, aliases))
    return parts


def _shard(part: Part, ranks: Ranks) -> Part:
    """This rank's share of ``part``: whole training groups (the configs of one k; an alias with
    its twin), the 2L fleet's dealt from rank 1 on (balance); ``part`` itself for one rank."""
    from .distributed import shard_fleet
    from .objectives import samples_per_point

    if ranks.world == 1:
        return part
    group = lambda c: (str(c.layers), samples_per_point(c.objective, c.k))  # as Fleet groups
    idx, configs, aliases = shard_fleet(part.configs, part.aliases, ranks, group,
                                        offset=int(part.name[0]) - 1)
    return Part(part.name, configs, part.epochs, part.ends, aliases, idx, len(part.configs))


def _done_path(run: Run) -> Path:
    return run.run_dir / "stages.pt"


def _done_key(run: Run) -> dict:
    """What a saved stage result depends on besides the training (which the fleet checkpoint
    fingerprints): a change here scores the stages anew."""
    return {"eval_k": run.eval_k, "eval_n": run.n_eval, "eval_seed": run.eval_seed,
            "eval_batch_size": run.eval_batch_size, "n_train": run.n_train}


def _load_done(run: Run) -> dict:
    """The stages scored so far (``stages.pt`` in the run directory), when their settings are
    this invocation's."""
    from .checkpoints import load_tensors
    from .integrity import check_stage_scores

    path = _done_path(run)
    if not path.exists():
        return {}
    saved = load_tensors(path, what="saved stage results",
                         fix="delete it to score the saved stages again (nothing is retrained)")
    if saved.get("key") != _done_key(run) or not isinstance(saved.get("stages"), dict):
        run.log("the saved stage results used other evaluation settings; scoring anew")
        return {}
    return check_stage_scores(saved["stages"], path)


def _save_done(run: Run, done: dict) -> None:
    from .checkpoints import save_tensors

    save_tensors(_done_path(run), {"key": _done_key(run), "stages": done})


def _train_to(run: Run, part: Part, epochs: int):
    """Train ``part``'s fleet to the end of ``epochs`` (resuming from its checkpoint).
    -> (fleet, histories), or None when it stopped early (state saved)."""
    import torch

    from .fleet import FLEET_CHECKPOINT, STATE_DIR, Fleet, fit_fast
    from .schedule import truncate_schedule

    fleet = Fleet.from_configs(part.configs, run.ds, run.device, gemm=run.gemm)
    schedule = truncate_schedule(part.configs[0].schedule(), epochs)
    run.log(f"{run.tag} {part.name}: training {len(part.configs)} configurations together on "
            f"{run.n_train} images to epoch {epochs}, batch {run.batch_size}, {run.trainer} "
            f"trainer, on {run.device} (gemm={fleet.gemm}, threads {torch.get_num_threads()})")
    saved = part.run_dir(run) / (FLEET_CHECKPOINT if run.trainer == "exact" else STATE_DIR)
    if saved.exists():
        run.log(f"{part.name}: continuing from the saved state {saved}")
    fit = fleet.fit if run.trainer == "exact" else partial(
        fit_fast, fleet, noise="device" if run.trainer == "fast-device" else "counter",
        moments=FAST_MOMENTS)
    with matmul_precision(run.tf32 and run.device.type == "cuda"):  # training only
        res = fit(run.ds.x_train[:run.n_train], schedule=schedule,
                  batch_size=part.configs[0].batch_size, binarize=run.ds.binarize,
                  run_dir=part.run_dir(run), max_seconds=run.seconds_left(),
                  progress=run.progress)
    log_estimate(run, part, res.history[0])
    frozen = getattr(res, "frozen", None)
    if frozen:
        run.log(f"{part.name}: diverged and frozen (member: epoch): {frozen}")
    if not res.finished:
        run.log(f"{part.name}: stopped after epoch {res.epochs_done} (state saved)")
        return None
    return fleet, res.history


def _score_stage(run: Run, part: Part, epochs: int) -> dict | None:
    """The members of ``part`` after ``epochs`` epochs: trained (or read back from their saved
    weights), scored by L_k on the test images and their active units counted.
    -> the stage's entry, or None when it stopped early (state saved)."""
    from .checkpoints import load_tensors
    from .fleet import FLEET_CHECKPOINT
    from .runs import load_run

    stage_dir = part.stage_dir(run, epochs)
    if not (stage_dir / "fleet.json").exists():  # written last by save_members
        trained = _train_to(run, part, epochs)
        if trained is None:
            return None
        fleet, histories = trained
        fleet.save_members(stage_dir, part.configs, histories)
        if run.stop is not None and run.stop.requested:  # scored by the next invocation
            return None
    loaded = [load_run(stage_dir / c.name) for c in part.configs]
    trained_gemm = load_tensors(stage_dir / part.configs[0].name / "checkpoint.pt").get("gemm")
    models = [m.to(run.device).eval() for m, _, _ in loaded]
    histories = [h for _, _, h in loaded]
    if any(len(h) != epochs for h in histories):
        raise ValueError(f"the saved weights in {stage_dir} are not of epoch {epochs}; delete "
                         "that folder to train them again")
    evaluated = _eval_stage(run, models, stage_dir / "eval.pt", epochs, part.fleet_size)
    if evaluated is None:
        return None
    t0 = time.perf_counter()
    from .evaluate import paper_active_units

    counted = [paper_active_units(m, run.ds.x_train, run.ds.binarize, run.eval_seed)
               for m in models]
    start = 0 if epochs == part.ends[0] else part.ends[part.ends.index(epochs) - 1]
    return {
        "part": part.name, "epochs": epochs,
        "histories": histories,
        "ll": evaluated["ll"],  # [M, n_eval] float64
        "active_units": [[int(v) for v in au.counts] for au, _ in counted],
        "active_units_variances": [[v.tolist() for v in au.variances] for au, _ in counted],
        "active_units_n": counted[0][1],
        "seconds": {"train": float(sum(h["seconds"] for h in histories[0][start:epochs])),
                    "eval_nll": float(evaluated["seconds"]),
                    "active_units": time.perf_counter() - t0},
        "weights": str(stage_dir),
        "gemm": {"train": trained_gemm, "eval": evaluated["gemm"]},
        "checkpoint": str(part.run_dir(run) / FLEET_CHECKPOINT),
        **({} if part.members is None else {"members": part.members}),  # a rank's share
        "provenance": {**run.started, "date_utc": now_utc()},
    }


def _eval_stage(run: Run, models: list, eval_path: Path, epochs: int,
                fleet_size: int | None = None) -> dict | None:
    """L_k of every model on the first ``n_eval`` test images (:mod:`.blockeval`: in blocks,
    resumable from ``eval_path``), or None when it stopped early (state saved); noise drawn
    as for ``fleet_size`` models at once (a rank's shard: the whole fleet's numbers)."""
    from .blockeval import evaluate_in_blocks
    from .evaluate import eval_images
    from .seeding import stream_seed

    run.log(f"scoring the models after {epochs} epoch(s)")
    return evaluate_in_blocks(
        models, eval_images(run.ds, run.n_eval, run.eval_seed), run.eval_k, eval_path,
        {**_done_key(run), "epochs": epochs, "models": len(models)},
        noise_seed=stream_seed(run.eval_seed, "eval-noise"), batch_size=run.eval_batch_size,
        block=run.eval_block, gemm=run.gemm, seconds_left=run.seconds_left, log=run.log,
        progress=run.progress, stack_size=fleet_size)

