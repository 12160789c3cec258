"""Capturing a CUDA graph without a trace: the warm-up that capture needs, undone.

A CUDA graph is captured after a few eager steps on a side stream (PyTorch's rule for
capture). Those steps must not count: :class:`Snapshot` records the parameters, the buffers and
the optimizer's state before them and :meth:`Snapshot.restore` puts them back (a moment the
optimizer did not have before is zeroed). Both the exact fleet's graph
(:mod:`.stepper`) and the fast trainer's blocks (:mod:`.fast`) warm up through
:func:`warm_up`; the snapshot is tested on the CPU, the side stream needs a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class Snapshot:
    """``tensors`` and the optimizer state of ``params`` as they are now."""

    def __init__(self, tensors: Sequence[Tensor], opt: torch.optim.Optimizer,
                 params: Sequence[Tensor]):
        self.tensors, self.opt, self.params = list(tensors), opt, list(params)
        self.values = [t.detach().clone() for t in self.tensors]
        self.state = {p: {k: v.clone() for k, v in opt.state[p].items() if isinstance(v, Tensor)}
                      for p in self.params if p in opt.state}  # a resumed run's moments

    def restore(self) -> None:
        """Every tensor and optimizer moment as recorded (zero where there was none)."""
        with torch.no_grad():
            for t, v in zip(self.tensors, self.values):
                t.copy_(v)
            for p in self.params:
                had = self.state.get(p, {})
                for k, v in self.opt.state[p].items():
                    if isinstance(v, Tensor):
                        v.copy_(had[k]) if k in had else v.zero_()


def warm_up(step: Callable[[], object], times: int, tensors: Sequence[Tensor],
            opt: torch.optim.Optimizer, params: Sequence[Tensor]) -> None:
    """``step()`` ``times`` times on a side CUDA stream, then ``tensors`` (the parameters
    among them) and ``opt``'s state of ``params`` as they were before."""
    snap = Snapshot(tensors, opt, params)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(times):
            step()
    torch.cuda.current_stream().wait_stream(side)
    snap.restore()
