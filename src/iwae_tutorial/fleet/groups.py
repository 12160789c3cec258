"""The fleet's groups: members with one architecture and one number of samples per point,
their parameters stacked (:class:`Group`), the loss of all groups' members
(:func:`group_loss`) and the optimizer's learning rate (:func:`set_lr`), shared by the exact
and the fast trainers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..objectives import log_w_objective
from .spec import StackedSpec
from .stacked import stacked_log_weights

__all__ = ["Group", "group_loss", "set_lr"]


class Group:
    """Members with the same architecture and samples per point (k; m * k for MIWAE): stacked
    parameters and per-member objectives."""

    def __init__(self, spec: StackedSpec, k: int, idx: list[int], objectives: list[str],
                 params: dict[str, Tensor], gemm: str = "bmm"):
        self.spec, self.k, self.idx, self.gemm = spec, k, idx, gemm
        self.params = params
        self.objective_names = sorted(set(objectives))
        self.fns = [log_w_objective(o) for o in self.objective_names]
        self.obj_index = torch.tensor([self.objective_names.index(o) for o in objectives],
                                      device=next(iter(params.values())).device)

    @property
    def size(self) -> int:
        return len(self.idx)

    def bound(self, p: dict[str, Tensor], x: Tensor, eps: Sequence[Tensor]) -> Tensor:
        """Each member's objective per data point: [M, B]."""
        lw = stacked_log_weights(p, self.spec, x, eps, gemm=self.gemm).transpose(0, 1)
        if len(self.fns) == 1:
            return self.fns[0](lw)
        bounds = torch.stack([fn(lw) for fn in self.fns])  # [n_obj, M, B]
        sel = self.obj_index.view(1, -1, 1).expand(1, bounds.shape[1], bounds.shape[2])
        return bounds.gather(0, sel).squeeze(0)


def group_loss(groups: Sequence[Group], xs: Sequence[Tensor],
                eps: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
    """Sum over members of the negative batch-mean objective, and the bounds [M_total]."""
    loss = None
    bounds = []
    for g, x, e in zip(groups, xs, eps):
        b = g.bound(g.params, x, e).mean(1)  # [M]
        loss = -b.sum() if loss is None else loss - b.sum()
        bounds.append(b.detach())
    return loss, torch.cat(bounds)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
