"""Training: the paper's schedule, Adam, dynamic binarization, atomic checkpoints, exact resume.

Randomness comes from three generators derived from one seed (see :func:`make_generators`):
the data order (on the CPU), the binarization and the sampling noise (on the model's device).
Their states are saved in every checkpoint, so a run that is killed and resumed continues
exactly where it stopped, bit for bit on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from .models import IWAE
from .objectives import get_objective

__all__ = [
    "Stage", "burda_schedule", "truncate_schedule", "resolve_schedule", "constant_schedule",
    "schedule_epochs",
    "make_generators", "make_optimizer", "fit", "TrainingDivergedError", "save_checkpoint",
    "load_checkpoint", "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class Stage:
    """``epochs`` passes over the data at learning rate ``lr``."""

    epochs: int
    lr: float


def burda_schedule(stages: int = 8, base_lr: float = 1e-3) -> list[Stage]:
    """The paper's schedule: for i = 0..7, 3^i epochs at lr = 1e-3 * 10^(-i/7); 3,280 epochs."""
    return [Stage(3**i, base_lr * 10 ** (-i / 7)) for i in range(stages)]


def truncate_schedule(schedule: Sequence[Stage], epochs: int) -> list[Stage]:
    """The first ``epochs`` epochs of ``schedule`` (same learning rates), for short runs."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    out, left = [], epochs
    for st in schedule:
        if left <= 0:
            break
        out.append(Stage(min(st.epochs, left), st.lr))
        left -= st.epochs
    if left > 0:  # longer than the schedule: continue at its last learning rate
        out.append(Stage(left, schedule[-1].lr))
    return out


def constant_schedule(epochs: int, lr: float = 1e-3) -> list[Stage]:
    """``epochs`` epochs at one learning rate."""
    return [Stage(int(epochs), float(lr))]


def resolve_schedule(schedule: Sequence[Stage] | None = None,
                     epochs: int | None = None) -> list[Stage]:
    """``schedule`` (default: the paper's), cut to its first ``epochs`` epochs when given."""
    schedule = burda_schedule() if schedule is None else schedule
    return list(schedule if epochs is None else truncate_schedule(schedule, epochs))


def schedule_epochs(schedule: Sequence[Stage]) -> int:
    """Total number of epochs in a schedule."""
    return sum(st.epochs for st in schedule)


def _lr_at(schedule: Sequence[Stage], epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``."""
    for st in schedule:
        if epoch < st.epochs:
            return st.lr
        epoch -= st.epochs
    raise IndexError("epoch beyond the schedule")


def make_generators(seed: int, device: torch.device | str) -> dict[str, torch.Generator]:
    """The three random streams of a run: ``order`` (CPU), ``binarize`` and ``noise`` (device)."""
    device = torch.device(device)
    return {
        "order": torch.Generator().manual_seed(seed),
        "binarize": torch.Generator(device=device).manual_seed(seed + 1),
        "noise": torch.Generator(device=device).manual_seed(seed + 2),
    }


def make_optimizer(params, lr: float = 1e-3) -> torch.optim.Adam:
    """Adam as in the paper's text: beta1 = 0.9, beta2 = 0.999, eps = 1e-4."""
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-4)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` with torch.save to a temporary file, then atomically rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error if unreadable."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except Exception as e:  # truncated or foreign file
        raise RuntimeError(
            f"cannot read the checkpoint {path} ({type(e).__name__}: {e}); delete it to start "
            "the run from scratch"
        ) from e


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
    history: list[dict] = []
    start_epoch = 0
    ckpt_path = Path(run_dir) / CHECKPOINT_NAME if run_dir is not None else None
    log_path = Path(run_dir) / "log.jsonl" if run_dir is not None else None
    fingerprint = _fingerprint(objective, k, batch_size, seed, n)
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(
                f"the checkpoint in {run_dir} belongs to another configuration "
                f"({state.get('fingerprint')}, not {fingerprint}); use another run_dir or "
                "resume=False"
            )
        if "model_config" in state and state["model_config"] != model.config:
            raise ValueError(
                f"the checkpoint in {run_dir} holds another model ({state['model_config']}, "
                f"not {model.config}); use another run_dir or resume=False"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for name, g in gens.items():
            g.set_state(state["rng"][name].cpu())  # states are CPU ByteTensors, even for CUDA
        start_epoch = int(state["epoch"])
        history = list(state["history"])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                   unit="step", desc=f"{objective} k={k}", leave=False, mininterval=0.5)
    model.train()
    on_cpu = device.type == "cpu"
    try:
        for epoch in range(start_epoch, total_epochs):
            lr = _lr_at(schedule, epoch)
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
                surrogate, bound = objective_fn(model, x, k, generator=gens["noise"],
                                                **objective_kwargs)
                loss = -surrogate.mean()
                if on_cpu:
                    if not torch.isfinite(loss):
                        _diverged(epoch, step, steps_per_epoch, loss.item(), ckpt_path)
                else:  # no host sync inside the epoch on accelerators
                    bad = ~torch.isfinite(loss) & (first_bad < 0)
                    first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bound_sum += bound.detach().mean().double()
                if bar is not None and (step + 1) % 50 == 0:
                    bar.update(50)
            if not on_cpu and int(first_bad) >= 0:
                _diverged(epoch, int(first_bad), steps_per_epoch, float("nan"), ckpt_path)
            train_bound = float(bound_sum) / steps_per_epoch
            if not math.isfinite(train_bound):
                _diverged(epoch, steps_per_epoch - 1, steps_per_epoch, train_bound, ckpt_path)
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
                    "fingerprint": fingerprint,
                })
                with open(log_path, "a") as f:
                    f.write(json.dumps(asdict(entry)) + "\n")
            if bar is not None:
                bar.update(steps_per_epoch % 50)
                bar.set_postfix(epoch=epoch + 1, bound=f"{train_bound:.2f}",
                                sec=f"{entry.seconds:.1f}")
            if callback is not None:
                callback(entry)
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history


def _fingerprint(objective: str, k: int, batch_size: int, seed: int, n: int) -> dict:
    """What must not change between a checkpoint and its resumption (the schedule may grow)."""
    return {"objective": str(objective), "k": int(k), "batch_size": int(batch_size),
            "seed": int(seed), "n": int(n)}


def _diverged(epoch: int, step: int, steps_per_epoch: int, value: float,
              ckpt_path: Path | None) -> None:
    where = (f"the last good checkpoint (after epoch {epoch}) is kept at {ckpt_path}"
             if ckpt_path is not None and epoch > 0 else "no checkpoint was written")
    raise TrainingDivergedError(
        f"the loss became {value} at epoch {epoch + 1}, step {step + 1} of {steps_per_epoch} "
        f"(global step {epoch * steps_per_epoch + step + 1}); {where}. Try a lower learning "
        "rate or check the data for NaNs."
    )
