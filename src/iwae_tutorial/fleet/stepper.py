"""Where the exact fleet is (:class:`Position`) and one optimisation step of it: every
member's batch, binarization and noise drawn from its own generators into static buffers, the
loss of all groups, Adam; on CUDA the step (without the draws) captured in a CUDA graph
(:class:`CudaGraphStep`). ``fleet`` is an :class:`iwae_tutorial.fleet.Fleet`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .graphs import warm_up
from .groups import group_loss

__all__ = ["Position", "Stepper", "CudaGraphStep"]


@dataclass
class Position:
    """Where :meth:`Fleet.fit` is: epochs done, step within the current epoch, and that
    epoch's data orders and running sums (in the fleet's internal member order)."""

    history: list[list[dict]]  # per member (member order), per epoch
    epoch: int = 0
    step: int = 0
    orders: Tensor | None = None  # [M, n]
    bound_sum: Tensor | None = None  # [M] float64
    first_bad: Tensor | None = None  # [M]: first step with a non-finite bound, or -1
    epoch_seconds: float = 0.0

    def new_epoch(self, epoch: int, orders: list[Tensor], device: torch.device) -> None:
        M = len(orders)
        self.epoch, self.step, self.epoch_seconds = epoch, 0, 0.0
        self.orders = torch.stack(orders).to(device)
        self.bound_sum = torch.zeros(M, dtype=torch.float64, device=device)
        self.first_bad = torch.full((M,), -1, dtype=torch.long, device=device)

    def add(self, step: int, bounds: Tensor) -> None:
        self.bound_sum += bounds.double()
        bad = ~torch.isfinite(bounds) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step),
                                     self.first_bad)

    def end_epoch(self, epochs_done: int) -> None:
        self.epoch, self.step, self.epoch_seconds = epochs_done, 0, 0.0


class Stepper:
    """Draws each member's batch and noise and runs one optimisation step of the fleet."""

    def __init__(self, fleet: Any, opt: torch.optim.Optimizer, batch_size: int, x_dim: int,
                 use_graph: bool):
        self.fleet, self.opt, self.B = fleet, opt, batch_size
        dev = fleet.device
        dt = fleet.dtype
        M = len(fleet)
        self.x_buf = torch.empty(M, batch_size, x_dim, device=dev, dtype=dt)
        # per group per layer [M_g, k, B, d_l]
        self.eps_buf = [[torch.empty(g.size, g.k, batch_size, d, device=dev, dtype=dt)
                         for d in g.spec.latent_dims] for g in fleet.groups]
        self.loss_fn = group_loss
        self.graph = None
        if use_graph:
            self.graph = CudaGraphStep(self)

    def draw(self, x_train: Tensor, idx: Tensor, gens: list[dict], binarize: bool) -> None:
        """Fill x_buf and eps_buf with the members' batches and noise (their generators)."""
        fleet = self.fleet
        x = x_train[idx]  # [M, B, D] internal order
        if binarize:
            for pos, i in enumerate(fleet.order):
                torch.bernoulli(x[pos], generator=gens[i]["binarize"], out=self.x_buf[pos])
        else:
            self.x_buf.copy_(x)
        for g, bufs in zip(fleet.groups, self.eps_buf):
            for j, i in enumerate(g.idx):
                for buf in bufs:  # layer order, as IWAE.sample_q draws them
                    torch.randn(buf.shape[1:], generator=gens[i]["noise"], out=buf[j])

    def xs(self) -> list[Tensor]:
        return list(self.x_buf.split([g.size for g in self.fleet.groups]))

    def eager_step(self) -> Tensor:
        loss, bounds = self.loss_fn(self.fleet.groups, self.xs(), self.eps_buf)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return bounds

    def step(self, x_train: Tensor, idx: Tensor, gens: list[dict], binarize: bool) -> Tensor:
        self.draw(x_train, idx, gens, binarize)
        if self.graph is not None:
            return self.graph.replay()
        return self.eager_step()


class CudaGraphStep:
    """The fleet's step (loss, backward, Adam) captured once in a CUDA graph.

    Warm-up runs real steps on a side stream (as the PyTorch documentation prescribes), so
    the parameters and Adam state are snapshotted before and restored after it: the capture
    itself changes nothing, and the first replay is the first real step. Random draws are
    made outside the graph into its static buffers (see :meth:`Stepper.draw`).
    Unmeasured in this repository (no GPU was available); written to be correct by
    construction.
    """

    def __init__(self, stepper: Stepper):
        self.stepper = stepper
        opt = stepper.opt
        params = stepper.fleet.parameters()
        # fill the static buffers with harmless values for the warm-up
        stepper.x_buf.zero_()
        for bufs in stepper.eps_buf:
            for b in bufs:
                b.zero_()
        warm_up(stepper.eager_step, 3, params, opt, params)
        self.graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            loss, bounds = stepper.loss_fn(stepper.fleet.groups, stepper.xs(), stepper.eps_buf)
            loss.backward()
            opt.step()
        self.bounds = bounds

    def replay(self) -> Tensor:
        self.graph.replay()
        return self.bounds.clone()
