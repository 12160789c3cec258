"""Training: the paper's schedule, Adam, dynamic binarization, atomic checkpoints, exact resume.

Randomness comes from three generators derived from one seed (see :func:`make_generators`):
the data order (on the CPU), the binarization and the sampling noise (on the model's device).
Their states are saved in every checkpoint, so a run that is killed and resumed continues
exactly where it stopped, bit for bit on the CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoints import CheckpointError, load_tensors, save_tensors
from .integrity import check_history, check_rng
from .models import IWAE
from .objectives import get_objective
from .schedule import Stage, lr_at, resolve_schedule, schedule_epochs
from .seeding import stream_seed
from .session import (
    LOG_NAME,
    RESTART_FIX,
    Session,
    TrainingDivergedError,
    check_resumable,
    check_state,
    data_digest,
    diverged,
    fingerprint,
)

__all__ = [
    "make_generators", "make_optimizer", "train_step", "fit", "TrainingDivergedError",
    "save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME", "LOG_NAME", "nonfinite_parameters",
]

CHECKPOINT_NAME = "checkpoint.pt"


def make_generators(seed: int, device: torch.device | str) -> dict[str, torch.Generator]:
    """The three random streams of a run: ``order`` (CPU), ``binarize`` and ``noise`` (device),
    each seeded by :func:`~iwae_tutorial.seeding.stream_seed` of (``seed``, its purpose)."""
    device = torch.device(device)
    return {
        "order": torch.Generator().manual_seed(stream_seed(seed, "order")),
        "binarize": torch.Generator(device=device).manual_seed(stream_seed(seed, "binarize")),
        "noise": torch.Generator(device=device).manual_seed(stream_seed(seed, "noise")),
    }


def make_optimizer(params, lr: float = 1e-3) -> torch.optim.Adam:
    """Adam as in the paper's text: beta1 = 0.9, beta2 = 0.999, eps = 1e-4."""
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-4)


def train_step(model: IWAE, optimizer: torch.optim.Optimizer, x: Tensor,
               objective: str | Callable[..., tuple[Tensor, Tensor]] = "iwae", k: int = 1,
               generator: torch.Generator | None = None,
               **objective_kwargs) -> tuple[Tensor, Tensor]:
    """One step of stochastic gradient ascent on a bound, for one minibatch ``x: [batch,
    x_dim]``: what :func:`fit` does for every batch.

    Returns (loss, bound): the loss that was minimised and the batch mean of the bound, both
    scalars measured before the step (detached tensors: ``float(bound)`` to print one).
    """
    # k samples per data point through the model (reparameterised noise from `generator`),
    # their log-weights, and the objective's bound per data point: ELBO, L_k, ...
    surrogate, bound = get_objective(objective)(model, x, k, generator=generator,
                                                **objective_kwargs)
    loss = -surrogate.mean()  # the optimizer minimises: minus the bound, averaged over x
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # the gradient estimator (for L_k: sum_i w~_i grad log w_i)
    optimizer.step()  # Adam
    return loss.detach(), bound.detach().mean()


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically (see :func:`iwae_tutorial.checkpoints.save_tensors`)."""
    save_tensors(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``, see
    :func:`iwae_tutorial.checkpoints.load_tensors`); a clear error if it is unreadable."""
    return load_tensors(path, map_location=map_location,
                        fix="delete it (or the run directory) to start the run from scratch, "
                            "or rerun with --restart")


def nonfinite_parameters(params: Sequence[Tensor]) -> bool:
    """Whether any parameter holds NaN or inf (one reduction per tensor, one host sync)."""
    flags = [torch.isfinite(p.detach().sum()) for p in params]
    return not bool(torch.stack(flags).all()) if flags else False


@dataclass
class EpochLog:
    epoch: int  # 1-based number of epochs done
    lr: float
    train_bound: float  # mean over the epoch's batches of the objective's bound
    seconds: float
    steps: int


def fit(
    model: IWAE,
    x_train: Tensor,
    *,
    objective: str = "iwae",
    k: int = 1,
    schedule: Sequence[Stage] | None = None,
    epochs: int | None = None,
    batch_size: int = 20,
    seed: int = 0,
    binarize: bool = True,
    run_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[EpochLog], None] | None = None,
    objective_kwargs: dict | None = None,
) -> list[dict]:
    """Train ``model`` by Adam on minibatches of ``x_train``.

    Args:
        model: the model (already on its device; ``x_train`` is moved there once).
        x_train: [n, x_dim] grey values in [0, 1] (binarized afresh for every batch when
            ``binarize``) or real values (``binarize=False``).
        objective: a name in :data:`iwae_tutorial.objectives.OBJECTIVES` ("vae", "iwae", ...).
        k: samples per data point.
        schedule: list of :class:`Stage`; default the paper's :func:`burda_schedule`, cut to
            ``epochs`` when given.
        seed: seeds the data order, the binarization and the sampling noise.
        run_dir: where ``checkpoint.pt`` and ``log.jsonl`` go (atomically, every epoch).
            With ``resume`` an existing checkpoint there is continued.

    Returns:
        the per-epoch log, as a list of dicts (epoch, lr, train_bound, seconds, steps).

    Raises:
        TrainingDivergedError: the loss became NaN/inf; the message names the step.
    """
    objective_fn = get_objective(objective)  # fails fast on a bad name
    schedule = resolve_schedule(schedule, epochs)
    total_epochs = schedule_epochs(schedule)
    device = model.device
    x_train = x_train.to(device)
    if x_train.dim() != 2 or x_train.shape[1] != model.x_dim:
        raise ValueError(f"x_train must be [n, {model.x_dim}], got {tuple(x_train.shape)}")
    n = x_train.shape[0]
    if n < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} examples, got {n}")
    steps_per_epoch = n // batch_size  # the remainder of each shuffled epoch is dropped
    objective_kwargs = dict(objective_kwargs or {})
    gens = make_generators(seed, device)
    opt = make_optimizer(model.parameters(), lr=schedule[0].lr)
    ckpt_path = Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None
    fprint = fingerprint(objective, k, batch_size, seed, n, data_digest(x_train))
    with Session(run_dir, lock_option="--out") as run:
        start_epoch, history = 0, []
        if ckpt_path is not None and resume and ckpt_path.exists():
            start_epoch, history = _resume(ckpt_path, model, opt, gens, fprint, schedule)
            run.repair_log(history)  # a kill after the checkpoint may have lost a line
        else:
            run.fresh_start()
        bar = run.progress_bar(
            progress, total=total_epochs * steps_per_epoch,
            initial=start_epoch * steps_per_epoch, unit="step", desc=f"{objective} k={k}",
            leave=False, mininterval=0.5)
        model.train()
        on_cpu = device.type == "cpu"
        for epoch in range(start_epoch, total_epochs):
            lr = lr_at(schedule, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=gens["order"]).to(device)
            bound_sum = torch.zeros((), dtype=torch.float64, device=device)
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            for step in range(steps_per_epoch):
                x = x_train[order[step * batch_size:(step + 1) * batch_size]]
                if binarize:
                    x = torch.bernoulli(x, generator=gens["binarize"])
                loss, bound = train_step(model, opt, x, objective_fn, k, gens["noise"],
                                         **objective_kwargs)
                if on_cpu:  # checked after the step: the checkpoint on disk stays good
                    if not torch.isfinite(loss):
                        _diverged(epoch, step, steps_per_epoch, loss.item(), ckpt_path)
                else:  # no host sync inside the epoch on accelerators
                    bad = ~torch.isfinite(loss) & (first_bad < 0)
                    first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
                bound_sum += bound.double()
                if bar is not None and (step + 1) % 50 == 0:
                    bar.update(50)
            if not on_cpu and int(first_bad) >= 0:
                _diverged(epoch, int(first_bad), steps_per_epoch, float("nan"), ckpt_path)
            train_bound = float(bound_sum) / steps_per_epoch
            if not math.isfinite(train_bound):
                _diverged(epoch, steps_per_epoch - 1, steps_per_epoch, train_bound, ckpt_path)
            if nonfinite_parameters(list(model.parameters())):  # a NaN gradient, finite loss
                _diverged(epoch, None, steps_per_epoch, float("nan"), ckpt_path)
            entry = EpochLog(epoch + 1, lr, train_bound, time.perf_counter() - t0,
                             steps_per_epoch)
            history.append(asdict(entry))
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(),
                    "model_config": model.config,
                    "optimizer": opt.state_dict(),
                    "rng": {name: g.get_state() for name, g in gens.items()},
                    "epoch": epoch + 1,
                    "history": history,
                    "fingerprint": fprint,
                })
            run.log_epoch(asdict(entry))  # after the checkpoint (see repair_log)
            if bar is not None:
                bar.update(steps_per_epoch % 50)
                bar.set_postfix(epoch=epoch + 1, bound=f"{train_bound:.2f}",
                                sec=f"{entry.seconds:.1f}")
            if callback is not None:
                callback(entry)
    model.eval()
    return history


def _resume(ckpt_path: Path, model: IWAE, opt: torch.optim.Optimizer,
            gens: dict[str, torch.Generator], fingerprint: dict,
            schedule: Sequence[Stage]) -> tuple[int, list[dict]]:
    """Load a checkpoint of :func:`fit` into ``model``, ``opt`` and ``gens`` after checking
    it belongs to this run; repair ``log.jsonl`` from its history. -> (epochs done, history)"""
    run_dir = ckpt_path.parent
    state = load_checkpoint(ckpt_path, map_location=model.device)
    check_state(state, ("model", "optimizer", "rng", "epoch", "history"), ckpt_path)
    fix = f"delete it, or {RESTART_FIX}"
    check_history(state["history"], ckpt_path, epoch=state["epoch"], fix=fix)
    check_rng(state["rng"], gens, ckpt_path, fix=fix)
    check_resumable(state.get("fingerprint"), fingerprint, state["history"], schedule,
                    str(run_dir))
    if "model_config" in state and state["model_config"] != model.config:
        raise ValueError(f"the checkpoint in {run_dir} holds another model "
                         f"({state['model_config']}, not {model.config}); use another run "
                         f"directory, or {RESTART_FIX}")
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for name, g in gens.items():
            g.set_state(state["rng"][name].cpu())  # CPU ByteTensors, even for CUDA
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint {ckpt_path} does not fit this model, its "
                              f"optimizer or its random generators ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:120]}); {fix}") from None
    return int(state["epoch"]), list(state["history"])


def _diverged(epoch: int, step: int | None, steps_per_epoch: int, value: float,
              ckpt_path: Path | None) -> None:
    what = (f"the loss became {value} at epoch {epoch + 1}, step {step + 1} of "
            f"{steps_per_epoch} (global step {epoch * steps_per_epoch + step + 1})"
            if step is not None else
            f"a parameter became NaN or infinite during epoch {epoch + 1} (a non-finite "
            "gradient with a finite loss); that epoch was not saved")
    raise diverged(what, ckpt_path if epoch > 0 else None,
                   "Try a lower learning rate or check the data for NaNs.", after_epoch=epoch)
