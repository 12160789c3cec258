"""Train many configurations at once, in one process: the fleet trainer.

Table 1 of Burda et al. (2015) is 12 models (VAE/IWAE x k in {1, 5, 50} x 1 or 2 stochastic
layers). Trained one after another with :func:`iwae_tutorial.train.fit`, each step of each model
runs a few hundred small kernels and a Python loop around them. The fleet stacks the members
instead:

- members with the same architecture and the same ``k`` form a *group*; a group's parameters
  are stacked, ``[M, ...]``, and its forward and backward passes are those of
  :mod:`iwae_tutorial.fleet.stacked` (a handful of batched matmuls over all M members at once with
  fused element-wise work; oneDNN for the large products on the CPU);
- one Adam (fused when the device supports it) updates every parameter of every member:
  Adam is element-wise, so one Adam over stacked tensors is M independent Adams;
- every member keeps its own objective (members of a group may mix "vae" and "iwae"), its own
  ``k``, data order, binarization and noise (the three generators of
  :func:`iwae_tutorial.train.make_generators`, seeded by the member's seed) and its own Adam
  moments. A member's result equals :func:`~iwae_tutorial.train.fit` of that model alone
  with the same seed, up to float rounding (``tests/test_fleet.py`` checks it).

On CUDA the step (forward, backward, Adam) is captured once in a CUDA graph and replayed, the
members' random draws made eagerly into its static buffers, one host sync per epoch; written
to be correct by construction, not run in this repository's tests (no GPU).

Public API
----------
- :class:`FleetMember`: what a member is (objective, k, seed, name; the layers are the
  model's).
- :class:`Fleet`: ``Fleet(models, members)`` or :meth:`Fleet.from_configs`;
  :meth:`Fleet.fit` (checkpointed, resumable, stoppable by time or signal);
  :meth:`Fleet.model` (a member as a plain :class:`~iwae_tutorial.models.IWAE`);
  :meth:`Fleet.save_members` (per-member run directories readable by
  :func:`iwae_tutorial.runs.load_run`).
- :class:`FitResult`, :class:`StopFlag` (SIGTERM/SIGINT as a flag), :data:`FLEET_CHECKPOINT`.
- :func:`table1_configs`: the 12 configurations of Table 1 (RunConfig objects).

The stacked layout is :mod:`iwae_tutorial.fleet.stacked`; L_5000 of many models at once is
:func:`iwae_tutorial.evaluate.log_likelihood_many`; the fast (counter-based noise, CUDA-graph
blocks) trainer of a fleet is :func:`iwae_tutorial.fleet.fast.fit_fast`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import save_tensors, write_json_atomic
from ..integrity import check_histories, check_rngs
from ..models import IWAE
from ..objectives import log_w_objective, samples_per_point
from ..schedule import Stage, lr_at, resolve_schedule, schedule_epochs
from ..session import (
    RESTART_FIX,
    FitResult,
    Session,
    check_resumable,
    check_state,
    data_digest,
    diverged,
    fingerprint,
)
from ..stopping import StopFlag
from ..train import (
    load_checkpoint,
    make_generators,
)
from .groups import Group, set_lr
from .stacked import (
    StackedSpec,
    resolve_gemm,
    stack_state_dicts,
    unstack_state_dict,
)
from .stepper import Position, Stepper

__all__ = ["FleetMember", "Fleet", "FitResult", "table1_configs", "FLEET_CHECKPOINT",
           "StopFlag"]

FLEET_CHECKPOINT = "fleet.pt"


# ---------------------------------------------------------------------------------- members
@dataclass(frozen=True)
class FleetMember:
    """One configuration trained in the fleet."""

    objective: str  # a spec of objectives.LOG_W_OBJECTIVES ("vae", "iwae", "power:p=2")
    k: int
    seed: int
    name: str = ""

    def __post_init__(self) -> None:
        log_w_objective(self.objective)  # ValueError for dreg, stl, piwae: they need train.fit
        if int(self.k) < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")


def table1_configs(dataset: str = "mnist", *, epochs: int | None = None,
                   n_train: int | None = None, seed: int = 0, batch_size: int = 20,
                   lr_scale: float = 1.0) -> list:
    """The 12 configurations of Table 1 (VAE/IWAE x k in 1, 5, 50 x 1 or 2 stochastic layers),
    as :class:`~iwae_tutorial.runs.RunConfig`, all with the same ``seed``."""
    from ..paper import ARCHITECTURES, table1_grid
    from ..runs import RunConfig

    return [RunConfig(dataset=dataset, objective=objective, k=k,
                      layers=[list(s) for s in ARCHITECTURES[layers]], epochs=epochs,
                      n_train=n_train, seed=seed, batch_size=batch_size, lr_scale=lr_scale)
            for layers, objective, k in table1_grid()]


# ------------------------------------------------------------------------------- the fleet
class Fleet:
    """Many IWAE/VAE models trained together (see the module docstring).

    Args:
        models: the initialised members (e.g. from
            :func:`iwae_tutorial.runs.build_model`, which seeds the initialisation);
            all on one device. Their weights are copied into the fleet's stacked tensors.
        members: one :class:`FleetMember` per model (objective, k, seed, name).
        gemm: matrix products by "bmm" (torch.bmm; any device), "onednn" (float32 on the
            CPU; ~2x faster where MKL is slow, see
            :func:`~iwae_tutorial.fleet.stacked.onednn_available`) or "auto"
            (oneDNN when usable; ``$IWAE_FLEET_GEMM`` overrides).
    """

    def __init__(self, models: Sequence[IWAE], members: Sequence[FleetMember],
                 gemm: str = "auto"):
        if len(models) != len(members) or not models:
            raise ValueError("give one FleetMember per model, and at least one model")
        self.members = list(members)
        names = [m.name or f"member{i}" for i, m in enumerate(self.members)]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        self.names = names
        self.device = models[0].device
        self.dtype = next(models[0].parameters()).dtype
        if any(m.device != self.device for m in models):
            raise ValueError("all models of a fleet must be on the same device")
        self.specs = [StackedSpec.of(m) for m in models]
        self.gemm = resolve_gemm(gemm, self.device, self.dtype)
        # an automatic choice (timed once per process) gives way to a checkpoint's on resume
        self.gemm_auto = gemm == "auto" and os.environ.get("IWAE_FLEET_GEMM", "auto") == "auto"
        keys: dict[tuple, list[int]] = {}
        for i, (spec, mem) in enumerate(zip(self.specs, self.members)):
            keys.setdefault((spec, samples_per_point(mem.objective, mem.k)), []).append(i)
        self.groups: list[Group] = []
        for (spec, k), idx in keys.items():
            params = stack_state_dicts([models[i].state_dict() for i in idx], spec)
            params = {n: t.to(self.device).requires_grad_(True) for n, t in params.items()}
            self.groups.append(Group(spec, k, idx, [self.members[i].objective for i in idx],
                                      params, self.gemm))
        # member order <-> the fleet's internal order (groups contiguous)
        self.order = [i for g in self.groups for i in g.idx]
        self.position = {i: pos for pos, i in enumerate(self.order)}

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_configs(cls, cfgs: Sequence, ds, device: torch.device | str = "cpu",
                     gemm: str = "auto") -> Fleet:
        """A fleet of :class:`~iwae_tutorial.runs.RunConfig` on data set ``ds``, each
        member initialised exactly as :func:`~iwae_tutorial.runs.build_model` does."""
        from ..runs import build_model

        models = [build_model(c, ds, device) for c in cfgs]
        members = [FleetMember(c.objective, c.k, c.seed, c.name) for c in cfgs]
        return cls(models, members, gemm=gemm)

    # ----------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.members)

    def parameters(self) -> list[Tensor]:
        return [t for g in self.groups for t in g.params.values()]

    def _locate(self, i: int) -> tuple[Group, int]:
        for g in self.groups:
            if i in g.idx:
                return g, g.idx.index(i)
        raise IndexError(i)

    def state_dict_of(self, i: int) -> dict[str, Tensor]:
        """Member i's weights as a normal ``IWAE`` state dict (copies)."""
        g, j = self._locate(i)
        return unstack_state_dict(g.params, j, g.spec)

    def model(self, i: int | str, device: torch.device | str | None = None) -> IWAE:
        """Member ``i`` (index or name) as a plain :class:`IWAE` in eval mode."""
        if isinstance(i, str):
            i = self.names.index(i)
        m = self.specs[i].build().to(device or self.device)
        m.load_state_dict(self.state_dict_of(i))
        return m.eval()

    def models(self, device: torch.device | str | None = None) -> list[IWAE]:
        return [self.model(i, device) for i in range(len(self))]

    def fingerprint(self, n: int, batch_size: int, binarize: bool, data: str) -> dict:
        """What must not change between a fleet checkpoint and its resumption, as a flat
        dict (``members``, ``binarize``, ``data``, then ``<member>.<key>``)."""
        out: dict = {"members": list(self.names), "binarize": bool(binarize), "data": data}
        for nm, m, sp in zip(self.names, self.members, self.specs):
            member = {**fingerprint(m.objective, m.k, batch_size, m.seed, n),
                      "layers": [list(s) for s in sp.layers], "x_dim": sp.x_dim,
                      "likelihood": sp.likelihood}
            out.update({f"{nm}.{key}": v for key, v in member.items()})
        return out

    def nonfinite_members(self) -> list[str]:
        """Names of the members with a NaN or inf parameter (one host sync)."""
        flags = torch.cat([torch.stack([torch.isfinite(t.detach().flatten(1).sum(1))  # [M_g]
                                        for t in g.params.values()]).all(0)
                           for g in self.groups])  # internal order
        return [self.names[self.order[pos]] for pos in
                (~flags).nonzero().flatten().tolist()]

    # ----------------------------------------------------------------------- training
    def fit(
        self,
        x_train: Tensor,
        *,
        schedule: Sequence[Stage] | None = None,
        epochs: int | None = None,
        batch_size: int = 20,
        binarize: bool = True,
        run_dir: str | Path | None = None,
        resume: bool = True,
        max_seconds: float | None = None,
        handle_signals: bool = True,
        cuda_graph: bool | None = None,
        progress: bool = True,
        callback: Callable[[int, list[dict]], None] | None = None,
        _stop_after_steps: int | None = None,
    ) -> FitResult:
        """Train every member on ``x_train`` with the schedule (default: the paper's).

        Each member sees exactly what :func:`iwae_tutorial.train.fit` with its seed would:
        its own shuffled order per epoch, its own binarization and noise.

        Args:
            x_train: [n, x_dim] grey values (binarized per batch when ``binarize``).
            schedule, epochs: as in :func:`~iwae_tutorial.train.fit`.
            run_dir: where ``fleet.pt`` (everything: stacked weights, Adam, generators,
                position in the epoch) is written atomically after every epoch and when
                stopping early; an existing one is resumed when ``resume``.
            max_seconds: stop cleanly (checkpointed, mid-epoch if need be) at the end of the
                first step after this many seconds; call again to continue.
            handle_signals: SIGTERM/SIGINT stop at the end of the current step, checkpointed
                (only in the main thread).
            cuda_graph: capture the step in a CUDA graph (default: on for CUDA).

        Returns:
            :class:`FitResult`. ``finished`` is False when it stopped early.

        Raises:
            TrainingDivergedError: a member's bound became NaN/inf (named in the message);
                the last good checkpoint is kept.
        """
        schedule = resolve_schedule(schedule, epochs)
        total_epochs = schedule_epochs(schedule)
        device = self.device
        x_train, steps_per_epoch, use_graph = self.prepare_fit(x_train, batch_size, cuda_graph)
        n, x_dim = x_train.shape

        gens = [make_generators(m.seed, device) for m in self.members]
        opt = self.make_optimizer(schedule[0].lr, graph=use_graph)
        ckpt_path = Path(run_dir) / FLEET_CHECKPOINT if run_dir is not None else None
        fprint = self.fingerprint(n, batch_size, binarize, data_digest(x_train))
        pos = Position([[] for _ in range(len(self))])
        with Session(run_dir, lock_option="--run-root", max_seconds=max_seconds,
                     handle_signals=handle_signals, stop_after_steps=_stop_after_steps) as run:
            if ckpt_path is not None and resume and ckpt_path.exists():
                pos = self._resume(ckpt_path, opt, gens, fprint, schedule)
                run.repair_log(self.log_entries(pos.history))
            else:
                run.fresh_start()
            stepper = Stepper(self, opt, batch_size, x_dim, use_graph=use_graph)
            bar = run.progress_bar(progress, total=total_epochs, initial=pos.epoch,
                                   unit="epoch", desc=f"fleet of {len(self)}", leave=False)
            for epoch in range(pos.epoch, total_epochs):
                lr = lr_at(schedule, epoch)
                set_lr(opt, lr)
                t0 = time.perf_counter()
                if pos.step == 0:
                    pos.new_epoch(epoch, [torch.randperm(n, generator=gens[i]["order"])
                                          for i in self.order], device)
                for step in range(pos.step, steps_per_epoch):
                    idx = pos.orders[:, step * batch_size:(step + 1) * batch_size]
                    pos.add(step, stepper.step(x_train, idx, gens, binarize))
                    run.step_done()
                    if run.stop_requested and step + 1 < steps_per_epoch:  # mid-epoch, saved
                        self._check_finite(pos, epoch, steps_per_epoch, ckpt_path)
                        pos.step = step + 1
                        pos.epoch_seconds += time.perf_counter() - t0
                        self._save(ckpt_path, opt, gens, fprint, pos)
                        return run.result(pos.history, False, epoch)
                self._check_finite(pos, epoch, steps_per_epoch, ckpt_path)
                means = (pos.bound_sum / steps_per_epoch).cpu().tolist()  # one sync per epoch
                seconds = pos.epoch_seconds + time.perf_counter() - t0
                for p_, i in enumerate(self.order):
                    pos.history[i].append({"epoch": epoch + 1, "lr": lr,
                                           "train_bound": means[p_], "seconds": seconds,
                                           "steps": steps_per_epoch})
                pos.end_epoch(epoch + 1)
                self._save(ckpt_path, opt, gens, fprint, pos)
                run.log_epoch(self.log_entries(pos.history)[-1])  # after the checkpoint
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(sec=f"{seconds:.1f}")
                if callback is not None:
                    callback(epoch + 1, [h[-1] for h in pos.history])
                if run.stop_requested and epoch + 1 < total_epochs:
                    return run.result(pos.history, False, epoch + 1)
            return run.result(pos.history, True, total_epochs)

    def _resume(self, ckpt_path: Path, opt: torch.optim.Optimizer, gens: list[dict],
                fprint: dict, schedule: Sequence[Stage]) -> Position:
        """Load a fleet checkpoint into the fleet, ``opt`` and ``gens`` after checking that
        it is this fleet's; repair ``log.jsonl`` from its history. -> where it stopped."""
        state = load_checkpoint(ckpt_path, map_location=self.device)
        check_state(state, ("params", "optimizer", "rng", "epoch", "step", "history"),
                    ckpt_path)
        fix = f"delete it, or {RESTART_FIX}"
        check_histories(state["history"], ckpt_path, self.names, epoch=state["epoch"], fix=fix)
        check_rngs(state["rng"], self.names, ("order", "binarize", "noise"), ckpt_path, fix=fix)
        self.use_gemm(state.get("gemm"), ckpt_path)
        saved = state.get("fingerprint")
        old = saved.get("members") if isinstance(saved, dict) else None
        if isinstance(old, list) and old and isinstance(old[0], dict):  # older versions' layout
            saved = {"members": [m.get("name") for m in old], "binarize": saved.get("binarize")}
        check_resumable(saved, fprint, state["history"][0], schedule, str(ckpt_path.parent),
                        place="another --run-root", other="another fleet or data set")
        self.load_state(state, opt)
        for g, s in zip(gens, state["rng"]):
            for name in g:
                g[name].set_state(s[name].cpu())  # CPU ByteTensors, even for CUDA
        pos = Position([list(h) for h in state["history"]], int(state["epoch"]),
                        int(state["step"]))
        if pos.step > 0:
            pos.orders = state["orders"].to(self.device)
            pos.bound_sum = state["bound_sum"].to(self.device)
            pos.first_bad = state["first_bad"].to(self.device)
            pos.epoch_seconds = float(state["epoch_seconds"])
        return pos

    def _save(self, ckpt_path: Path | None, opt: torch.optim.Optimizer, gens: list[dict],
              fprint: dict, pos: Position) -> None:
        """Write the fleet checkpoint (everything to resume at ``pos``), unless a member's
        parameters are NaN or infinite (then the last good checkpoint stays)."""
        bad = self.nonfinite_members()
        if bad:
            raise diverged(f"member(s) {', '.join(map(repr, bad))}: a parameter became NaN or "
                           f"infinite by epoch {pos.epoch + (1 if pos.step else 0)} (a "
                           "non-finite gradient with a finite bound)", ckpt_path)
        if ckpt_path is None:
            return
        state = {
            "params": {self.group_name(g): {n_: t.detach() for n_, t in g.params.items()}
                       for g in self.groups},
            "optimizer": opt.state_dict(),
            "rng": [{name: gg.get_state() for name, gg in g.items()} for g in gens],
            "epoch": pos.epoch, "step": pos.step, "history": pos.history,
            "fingerprint": fprint, "members": [asdict(m) for m in self.members],
            "names": self.names, "gemm": self.gemm,
        }
        if pos.step > 0:
            state.update(orders=pos.orders.cpu(), bound_sum=pos.bound_sum.cpu(),
                         first_bad=pos.first_bad.cpu(), epoch_seconds=pos.epoch_seconds)
        save_tensors(ckpt_path, state)

    def use_gemm(self, saved: object, ckpt_path: Path) -> None:
        """Resume with the checkpoint's matrix-product kernels (they change the rounding): an
        automatic choice gives way, another explicit one is refused; no entry: keep ours."""
        if not isinstance(saved, str) or saved == self.gemm:
            return
        if not self.gemm_auto:
            raise ValueError(f"the checkpoint {ckpt_path} was trained with gemm {saved!r}, "
                             f"{self.gemm!r} is asked for now (--gemm or IWAE_FLEET_GEMM); "
                             f"resume with --gemm auto or {saved}, or {RESTART_FIX}")
        try:
            resolve_gemm(saved, self.device, self.dtype)
        except ValueError:  # not usable here (another machine): keep the automatic choice
            return
        self.gemm = saved
        for g in self.groups:
            g.gemm = saved

    def log_entries(self, history: Sequence[Sequence[dict]]) -> list[dict]:
        """The lines of the fleet's ``log.jsonl``, one per epoch, from the members' histories."""
        return [{"epoch": first["epoch"], "lr": first["lr"], "seconds": first["seconds"],
                 "train_bound": {self.names[i]: history[i][e]["train_bound"]
                                 for i in range(len(self))}}
                for e, first in enumerate(history[0])]

    def _check_finite(self, pos: Position, epoch: int, steps_per_epoch: int,
                      ckpt_path: Path | None) -> None:
        bad = pos.first_bad.cpu().tolist()
        for pos, s in enumerate(bad):
            if s >= 0:
                _diverged(self.names[self.order[pos]], epoch, s, steps_per_epoch, ckpt_path)

    def prepare_fit(self, x_train: Tensor, batch_size: int,
                     cuda_graph: bool | None) -> tuple[Tensor, int, bool]:
        """Checks of a fit (exact or fast): -> (x_train on the fleet's device, steps per epoch,
        whether to use a CUDA graph)."""
        x_dim = self.specs[0].x_dim
        if any(s.x_dim != x_dim for s in self.specs):
            raise ValueError("all members must model data of the same size")
        if x_train.dim() != 2 or x_train.shape[1] != x_dim:
            raise ValueError(f"x_train must be [n, {x_dim}], got {tuple(x_train.shape)}")
        x_train = x_train.to(device=self.device, dtype=self.dtype)
        n = x_train.shape[0]
        if n < batch_size:
            raise ValueError(f"need at least batch_size={batch_size} examples, got {n}")
        on_cuda = self.device.type == "cuda"
        use_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if use_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the fleet on a CUDA device")
        return x_train, n // batch_size, use_graph

    def load_state(self, state: dict, opt: torch.optim.Optimizer) -> None:
        """A checkpoint's stacked parameters and Adam state; ``opt`` keeps its kind of lr."""
        self._load_params(state["params"])
        lrs = [group["lr"] for group in opt.param_groups]
        opt.load_state_dict(state["optimizer"])
        for group, lr0 in zip(opt.param_groups, lrs):
            group["lr"] = lr0

    def make_optimizer(self, lr: float, graph: bool) -> torch.optim.Adam:
        """One Adam over all stacked parameters (betas and eps of train.make_optimizer)."""
        params = self.parameters()
        kw: dict = {"betas": (0.9, 0.999), "eps": 1e-4}
        if graph:  # capturable in a CUDA graph; lr a device tensor so it can change
            return torch.optim.Adam(params, lr=torch.tensor(lr, device=self.device),
                                    capturable=True, fused=True, **kw)  # 1-2 kernels a step
        try:
            return torch.optim.Adam(params, lr=lr, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - old torch/device
            return torch.optim.Adam(params, lr=lr, foreach=True, **kw)

    def group_name(self, g: Group) -> str:
        return "+".join(self.names[i] for i in g.idx)

    def _load_params(self, stacked: dict[str, dict[str, Tensor]]) -> None:
        for g in self.groups:
            src = stacked[self.group_name(g)]
            with torch.no_grad():
                for n_, t in g.params.items():
                    t.copy_(src[n_])

    # ----------------------------------------------------------------------- saving
    def save_members(self, directory: str | Path, configs: Sequence | None = None,
                     histories: Sequence[Sequence[dict]] | None = None) -> list[Path]:
        """One run directory per member (``<directory>/<name>/``) with ``checkpoint.pt``
        (model weights, model config, history) and, when ``configs`` (RunConfig per member)
        are given, ``config.json``, so :func:`iwae_tutorial.runs.load_run` reads it.
        Also writes ``<directory>/fleet.json`` (the members and their files)."""
        from ..runs import write_run

        directory = Path(directory)
        out = [write_run(directory / name, self.model(i, device="cpu"),
                         configs[i] if configs is not None else None,
                         histories[i] if histories is not None else [],
                         trained_by="iwae_tutorial.fleet", gemm=self.gemm)
               for i, name in enumerate(self.names)]
        meta = {"members": [{"name": nm, **asdict(m), "layers": [list(s) for s in sp.layers],
                             "dir": nm} for nm, m, sp in zip(self.names, self.members,
                                                               self.specs)]}
        write_json_atomic(directory / "fleet.json", meta)
        return out


def _diverged(name: str, epoch: int, step: int, steps_per_epoch: int,
              ckpt_path: Path | None) -> None:
    raise diverged(f"member {name!r}: the bound became NaN or infinite at epoch {epoch + 1}, "
                   f"step {step + 1} of {steps_per_epoch}", ckpt_path)
