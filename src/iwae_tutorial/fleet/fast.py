"""The fleet's fast path: counter-based noise, data order on the device, many steps per replay.

:meth:`Fleet.fit <iwae_tutorial.fleet.Fleet.fit>` (the *exact* path) draws every member's noise
from the member's own ``torch.Generator``, exactly as :func:`iwae_tutorial.train.fit` does, so
each member equals a model trained alone, bit for bit on the CPU. That costs ~30 random-number
calls from Python per step, outside any CUDA graph: on a GPU the step is launch-bound.

:func:`fit_fast` keeps what a member must keep (its objective, k, seed and Adam state) and
changes only where its random numbers come from: :mod:`iwae_tutorial.fleet.noise`, a hash of (the
member's seed, the global step, the element), drawn for all members of a group in one tensor
operation. So

- a member's noise, binarization and data order depend on its seed and the step only, not on
  which other members train beside it (a member of a fleet equals itself trained alone by
  :func:`fit_fast`; two members with one seed see the same numbers, so at k = 1 a VAE and an
  IWAE stay identical);
- the data order of an epoch is a permutation made on the device (:func:`noise.permutation`),
  and a step finds its batch from a step counter kept in a device tensor;
- on CUDA, ``block`` consecutive steps (forward, backward, Adam, the counters' increments) are
  captured in one CUDA graph and replayed: no Python and no host synchronisation inside an
  epoch, one read of the epoch's bounds at its end. On the CPU the same steps run eagerly
  (the tests check the math there).

Its checkpoints hold no generator states (the noise is a function of the step): parameters,
Adam moments and the epoch, sharded into files of at most 16 MiB
(:func:`iwae_tutorial.shards.save_sharded`), so a run's whole state comes back from a
device command and is carried into the next one.

The noise differs from ``torch.randn``'s, so the fast path matches the exact path in
distribution, not sample by sample: ``tests/test_fast.py`` checks that a short run reaches the
exact path's test NLL within Monte Carlo error.

Two sources of noise (``noise=``):

- ``"counter"`` (the reference, the default): the hash above. A member's numbers depend on its
  seed only. It costs ~10 integer operations per random number: most of a GPU step's kernels.
- ``"device"``: ``torch.rand``/``torch.randn`` on the device's generator, one kernel per draw
  for a whole group (on CUDA the default generator, whose Philox offset advances at each graph
  replay, so it is safe inside a CUDA graph). The members share one generator, seeded by
  ``stream_seed(first member's seed, "device-noise")``; its state is saved with the run.
  ``tests/test_fast.py`` checks on the CPU that both sources give the same distributions and
  that a run resumed on either equals the uninterrupted one.

A member whose bound or parameters become NaN or infinite is **frozen** (``freeze_diverged``,
the default): its weights go back to where they were at the start of that epoch, its Adam
moments to zero and its gradients are masked from then on, so it stops changing; its history
says ``"frozen": true`` from that epoch on (``train_bound`` repeats its last finite epoch) and
:attr:`FastResult.frozen` names it. The other members train on. Only when every member has
diverged is it an error.

The state can keep Adam's moments in bfloat16 (``moments="bfloat16"``; parameters stay as
they are): 8 bytes per parameter instead of 12, so the twelve models' state travels with a
device command. A run resumed from it is not bit-for-bit the uninterrupted run (the moments are
rounded to 8 bits of mantissa once); ``tests/test_fast.py`` measures how far it moves.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import (
    CheckpointError,
    sync_log,
    write_json_atomic,
)
from ..data.mnist import MNIST_N_TRAIN
from ..integrity import check_histories
from ..schedule import Stage, lr_at, resolve_schedule, schedule_epochs
from ..seeding import stream_seed
from ..session import FitResult, Session, check_resumable, data_digest, diverged
from ..shards import load_sharded, save_sharded
from . import noise
from .graphs import warm_up
from .groups import group_loss, set_lr

__all__ = ["fit_fast", "FastResult", "STATE_DIR", "NOISE_SOURCES", "MOMENT_DTYPES",
           "projected_hours"]

STATE_DIR = "fast-state"  # the sharded checkpoint's folder inside run_dir
NOISE_SOURCES = ("counter", "device")
#: how Adam's moments are stored in the saved state ("exact": as trained; parameters always are)
MOMENT_DTYPES = {"exact": None, "bfloat16": torch.bfloat16}


#: the fast trainer's result is the package's one result type
FastResult = FitResult


class _BlockRunner:
    """The fast step's static buffers and counters, and ``block`` steps run (or replayed)."""

    def __init__(self, fleet, opt: torch.optim.Optimizer, x_train: Tensor, batch_size: int,
                 binarize: bool, block: int, use_graph: bool, source: str = "counter"):
        self.fleet, self.opt, self.x_train = fleet, opt, x_train
        self.B, self.binarize, self.block = batch_size, binarize, block
        self.use_graph = use_graph
        dev = fleet.device
        M, n = len(fleet), x_train.shape[0]
        order = fleet.order  # internal order: groups contiguous
        sizes = [g.size for g in fleet.groups]
        if source == "counter":
            self.noise = noise.CounterNoise(
                noise.seed_tensor([fleet.members[i].seed for i in order], dev), sizes)
        else:
            self.noise = noise.DeviceNoise(stream_seed(fleet.members[0].seed, "device-noise"), dev,
                                      sizes)
        self.alive = torch.ones(M, dtype=torch.bool, device=dev)  # False: frozen
        self.alive_g = list(self.alive.split(sizes))
        self.masked = False  # gradients of frozen members masked (once one is frozen)
        self.step_t = torch.zeros((), dtype=torch.int64, device=dev)  # step within the epoch
        self.gstep_t = torch.zeros((), dtype=torch.int64, device=dev)  # global step
        self.orders = torch.zeros(M, n, dtype=torch.int64, device=dev)
        self.bound_sum = torch.zeros(M, dtype=torch.float64, device=dev)
        self.first_bad = torch.full((M,), -1, dtype=torch.long, device=dev)
        self.cols = torch.arange(batch_size, device=dev)
        self.graph = _BlockGraph(self) if use_graph else None

    def new_epoch(self, epoch: int, steps_per_epoch: int) -> None:
        """The epoch's data orders (on the device) and fresh sums; counters set from epoch."""
        self.orders.copy_(self.noise.order(epoch, self.x_train.shape[0]))
        self.bound_sum.zero_()
        self.first_bad.fill_(-1)
        self.step_t.zero_()
        self.gstep_t.fill_(epoch * steps_per_epoch)

    def one_step(self) -> None:
        """One optimisation step of every member, with no host synchronisation."""
        fleet = self.fleet
        idx = self.orders.index_select(1, self.step_t * self.B + self.cols)  # [M, B]
        x = self.x_train[idx]  # [M, B, D]
        if self.binarize:
            x = self.noise.binarize(x, self.gstep_t)
        xs = x.split([g.size for g in fleet.groups])
        eps = [[self.noise.normal(gi, level, (g.k, self.B, d), x.dtype, self.gstep_t)
                for level, d in enumerate(g.spec.latent_dims)]
               for gi, g in enumerate(fleet.groups)]
        loss, bounds = group_loss(fleet.groups, xs, eps)
        for p in fleet.parameters():
            p.grad = None
        loss.backward()
        if self.masked:  # frozen members: no gradient (zero moments: Adam leaves them be)
            with torch.no_grad():
                for g, alive in zip(fleet.groups, self.alive_g):
                    for p in g.params.values():
                        p.grad.masked_fill_(~alive.view(-1, *[1] * (p.dim() - 1)), 0.0)
        self.opt.step()
        with torch.no_grad():
            self.bound_sum.add_(bounds.double())
            bad = ~torch.isfinite(bounds) & (self.first_bad < 0) & self.alive
            self.first_bad.copy_(torch.where(bad, self.step_t.expand_as(self.first_bad),
                                             self.first_bad))
            self.step_t.add_(1)
            self.gstep_t.add_(1)

    def run_block(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            for _ in range(self.block):
                self.one_step()

    # ------------------------------------------------------------------ frozen members
    def snapshot(self) -> None:
        """The parameters at the start of an epoch (to put a diverged member back)."""
        self.saved = [t.detach().clone() for t in self.fleet.parameters()]

    def freeze(self, positions: list[int], restore: bool = True) -> None:
        """Members at internal ``positions`` back to the epoch's start (``restore``; a resumed
        run's frozen members already are), moments zero, masked from now on (recapturing the
        graph with the mask)."""
        fleet, opt = self.fleet, self.opt
        rows: dict[int, list[int]] = {}  # group -> rows within the group
        start = 0
        for gi, g in enumerate(fleet.groups):
            rows[gi] = [p - start for p in positions if start <= p < start + g.size]
            start += g.size
        params = fleet.parameters()
        with torch.no_grad():
            self.alive[positions] = False
            i = 0
            for gi, g in enumerate(fleet.groups):
                for t in g.params.values():
                    r = rows[gi]
                    if r and restore:
                        t[r] = self.saved[i][r]
                    if r:
                        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                            m = opt.state.get(t, {}).get(key)
                            if isinstance(m, Tensor) and m.shape == t.shape:
                                m[r] = 0.0
                    i += 1
        assert i == len(params)
        if not self.masked:
            self.masked = True
            if self.use_graph:
                self.graph = _BlockGraph(self)


class _BlockGraph:
    """``block`` fast steps captured in one CUDA graph (warm-up on a side stream, with every
    parameter, Adam moment and counter restored afterwards, so the capture changes nothing).
    Not run in this repository's tests (no GPU); its eager twin
    :meth:`_BlockRunner.run_block` is."""

    def __init__(self, steps: _BlockRunner):
        params = steps.fleet.parameters()
        buffers = [steps.step_t, steps.gstep_t, steps.bound_sum, steps.first_bad]
        gen_state = steps.noise.state()  # the warm-up's draws must not count
        warm_up(steps.one_step, 2, params + buffers, steps.opt, params)
        if gen_state is not None:
            steps.noise.load_state(gen_state)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for _ in range(steps.block):
                steps.one_step()

    def replay(self) -> None:
        self.graph.replay()


def _block_size(steps_per_epoch: int, block: int) -> int:
    """The largest divisor of ``steps_per_epoch`` that is at most ``block``."""
    return max(d for d in range(1, min(block, steps_per_epoch) + 1) if steps_per_epoch % d == 0)


def fit_fast(
    fleet,
    x_train: Tensor,
    *,
    schedule: Sequence[Stage] | None = None,
    epochs: int | None = None,
    batch_size: int = 20,
    binarize: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = True,
    max_seconds: float | None = None,
    block: int = 20,
    cuda_graph: bool | None = None,
    checkpoint_every_s: float = 60.0,
    handle_signals: bool = True,
    progress: bool = True,
    callback: Callable[[int, list[dict]], None] | None = None,
    noise: str = "counter",
    moments: str = "exact",
    freeze_diverged: bool = True,
) -> FastResult:
    """Train every member of ``fleet`` with the fast step (see the module docstring).

    Args:
        fleet: an :class:`iwae_tutorial.fleet.Fleet`.
        x_train: [n, x_dim] grey values (binarized per batch when ``binarize``).
        schedule, epochs, batch_size, binarize: as in :meth:`Fleet.fit`.
        run_dir: the sharded state goes to ``run_dir/fast-state/`` (every
            ``checkpoint_every_s`` seconds, at the end, and when stopping); resumed when
            ``resume``. ``run_dir/log.jsonl`` gets one line per epoch.
        max_seconds: stop at the end of the first epoch after this many seconds (state saved).
        handle_signals: SIGTERM/SIGINT stop at the end of the current epoch, state saved
            (only in the main thread).
        block: steps per CUDA-graph replay (the largest divisor of the steps per epoch that is
            at most ``block``).
        cuda_graph: capture the block (default: on for CUDA).
        noise: "counter" (the reference) or "device" (the device's generator); see the
            module docstring.
        moments: Adam's moments in the saved state: "exact" (as trained) or "bfloat16".
        freeze_diverged: freeze a member whose bound or parameters become NaN/inf (see the
            module docstring) instead of stopping.

    Raises:
        TrainingDivergedError: every member diverged (or one did and ``freeze_diverged`` is
            False); the last saved state is kept.
    """
    if noise not in NOISE_SOURCES:
        raise ValueError(f"noise must be one of {', '.join(NOISE_SOURCES)}, got {noise!r}")
    if moments not in MOMENT_DTYPES:
        raise ValueError(f"moments must be one of {', '.join(MOMENT_DTYPES)}, got {moments!r}")
    schedule = resolve_schedule(schedule, epochs)
    total = schedule_epochs(schedule)
    x_train, steps_per_epoch, use_graph = fleet.prepare_fit(x_train, batch_size, cuda_graph)
    n = x_train.shape[0]
    block = _block_size(steps_per_epoch, block)
    opt = fleet.make_optimizer(schedule[0].lr, graph=use_graph)
    fprint = {**fleet.fingerprint(n, batch_size, binarize, data_digest(x_train)),
              "noise": ("counter-based (iwae_tutorial.fleet.noise)" if noise == "counter"
                        else "the device's generator")}
    state_dir = Path(run_dir) / STATE_DIR if run_dir is not None else None
    history: list[list[dict]] = [[] for _ in range(len(fleet))]
    with Session(run_dir, lock_option="--run-root", max_seconds=max_seconds,
                 handle_signals=handle_signals) as run:
        start, saved = 0, None
        if state_dir is not None:
            _check_state_dir(state_dir)
        if state_dir is not None and resume and (state_dir / "index.pt").exists():
            start, history, saved = _resume(fleet, opt, state_dir, fprint, schedule)
            run.repair_log(fleet.log_entries(history))
        else:
            run.fresh_start()
        frozen: dict[str, int] = dict((saved or {}).get("frozen") or {})
        steps = _BlockRunner(fleet, opt, x_train, batch_size, binarize, block, use_graph, noise)
        if saved is not None and noise == "device":
            try:
                steps.noise.load_state(saved.get("generator"))
            except ValueError as e:
                raise CheckpointError(f"{e} ({state_dir}); delete it to start afresh") from None
        if frozen:
            steps.freeze([fleet.order.index(fleet.names.index(m)) for m in frozen],
                         restore=False)
        save = partial(_save, fleet, opt, steps, state_dir, fprint, moments=moments)
        bar = run.progress_bar(progress, total=total, initial=start, unit="epoch",
                               desc=f"fast fleet of {len(fleet)}", leave=False)
        last_save = time.perf_counter()
        for epoch in range(start, total):
            lr = lr_at(schedule, epoch)
            set_lr(opt, lr)
            t0 = time.perf_counter()
            if freeze_diverged:
                steps.snapshot()
            steps.new_epoch(epoch, steps_per_epoch)
            for _ in range(steps_per_epoch // block):
                steps.run_block()
            means = (steps.bound_sum / steps_per_epoch).cpu().tolist()  # one sync
            bad = [fleet.names[fleet.order[p]] for p, s in
                   enumerate(steps.first_bad.cpu().tolist()) if s >= 0]
            bad += [name for name in fleet.nonfinite_members()
                    if name not in bad and name not in frozen]
            if bad and (not freeze_diverged or len(frozen) + len(bad) == len(fleet)
                        or epoch == 0):  # no finite epoch to freeze at
                raise diverged(f"member(s) {', '.join(map(repr, bad))}: the bound or a "
                               f"parameter became NaN or infinite in epoch {epoch + 1}",
                               state_dir)
            if bad:
                steps.freeze([fleet.order.index(fleet.names.index(m)) for m in bad])
                frozen.update({m: epoch + 1 for m in bad})
                print(f"fit_fast: member(s) {', '.join(map(repr, bad))} diverged in epoch "
                      f"{epoch + 1} and are frozen at their weights of epoch {epoch}; the "
                      "others train on", file=sys.stderr, flush=True)
            seconds = time.perf_counter() - t0
            for p, i in enumerate(fleet.order):
                entry = {"epoch": epoch + 1, "lr": lr, "train_bound": means[p],
                         "seconds": seconds, "steps": steps_per_epoch}
                if fleet.names[i] in frozen:  # its last finite epoch's bound, marked
                    last = history[i][-1]["train_bound"] if history[i] else float("nan")
                    entry.update(train_bound=last, frozen=True,
                                 diverged_in_epoch=frozen[fleet.names[i]])
                history[i].append(entry)
            run.log_epoch(fleet.log_entries(history)[-1])  # repaired on resume
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(epoch + 1, [h[-1] for h in history])
            now = time.perf_counter()
            stop = run.stop_requested and epoch + 1 < total
            if state_dir is not None and (stop or epoch + 1 == total
                                          or now - last_save > checkpoint_every_s):
                save(epoch + 1, history, frozen)
                last_save = now
            if stop:
                return run.result(history, False, epoch + 1, dict(frozen))
        return run.result(history, True, total, dict(frozen))

def _save(fleet, opt, steps: _BlockRunner, state_dir: Path | None, fprint: dict, epochs_done: int,
          history: list[list[dict]], frozen: dict[str, int], *, moments: str) -> None:
    """The sharded state; Adam's moments in ``moments`` (parameters and steps as they are)."""
    if state_dir is None:
        return
    opt_state = opt.state_dict()
    dtype = MOMENT_DTYPES[moments]
    if dtype is not None:
        opt_state["state"] = {i: {k: (v.to(dtype) if k.startswith(("exp_avg", "max_exp_avg"))
                                      else v) for k, v in st.items()}
                              for i, st in opt_state["state"].items()}
    save_sharded(state_dir, {
        "params": {fleet.group_name(g): {k: t.detach() for k, t in g.params.items()}
                   for g in fleet.groups},
        "optimizer": opt_state, "epoch": epochs_done, "history": history,
        "fingerprint": fprint, "names": fleet.names, "gemm": fleet.gemm,
        "generator": steps.noise.state(), "frozen": dict(frozen), "moments": moments})
    write_json_atomic(state_dir / "about.json", {
        "epochs_done": epochs_done, "members": fleet.names, "frozen": frozen,
        "moments": moments, "noise": steps.noise.kind,
        "what": "the sharded state of iwae_tutorial.fleet.fast.fit_fast: carry this folder into "
                "the next command to continue"})


def _check_state_dir(state_dir: Path) -> None:
    """State shards without their index (lost, or not carried along) are refused, never
    deleted: a fresh start would replace them."""
    if state_dir.is_dir() and not (state_dir / "index.pt").exists():
        shards = sorted(p.name for p in state_dir.glob("shard-*.pt"))
        if shards:
            raise CheckpointError(
                f"{state_dir} holds state shards ({', '.join(shards[:3])}) but not their "
                f"index.pt; restore index.pt (carry the whole folder), or delete {state_dir} "
                "to start afresh")


def _resume(fleet, opt, state_dir: Path, fprint: dict,
            schedule: Sequence[Stage]) -> tuple[int, list[list[dict]], dict]:
    state = load_sharded(state_dir, map_location=fleet.device)
    where, fix = state_dir / "index.pt", f"delete {state_dir} to start afresh"
    missing = [k for k in ("params", "optimizer", "epoch", "history") if k not in state]
    if missing:
        raise CheckpointError(f"the state in {state_dir} lacks {', '.join(missing)}; {fix}")
    check_histories(state["history"], where, fleet.names, epoch=state["epoch"], fix=fix,
                    kind="state")
    check_resumable(state.get("fingerprint"), fprint, state["history"][0], schedule,
                    str(state_dir.parent), place="another --run-root",
                    other="another fleet or data set")
    fleet.use_gemm(state.get("gemm"), where)  # the kernels it was trained with
    try:
        fleet.load_state(state, opt)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the state in {state_dir} does not fit this fleet "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                              f"{fix}") from None
    frozen = state.get("frozen") or {}
    if not (isinstance(frozen, dict) and all(m in fleet.names for m in frozen)):
        raise CheckpointError(f"the state in {state_dir} names frozen members this fleet "
                              f"lacks; {fix}")
    history = [list(h) for h in state["history"]]
    sync_log(state_dir.parent / "log.jsonl", fleet.log_entries(history))
    return int(state["epoch"]), history, state


def projected_hours(ms_per_step: float, batch_size: int, n_train: int = MNIST_N_TRAIN,
                    epochs: int = 3280) -> float:
    """Hours of training for ``epochs`` epochs at ``ms_per_step`` per fleet step."""
    return ms_per_step * 1e-3 * epochs * math.floor(n_train / batch_size) / 3600.0
