"""The layout of stacked members: :class:`StackedSpec` (the architecture members share, read
from an :class:`~iwae_tutorial.models.IWAE`) and the state-dict stacking of M members into one
tensor per parameter (``[M, ...]``) and back. The products on it are
:mod:`iwae_tutorial.fleet.stacked`'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models import IWAE

__all__ = ["StackedSpec", "stack_state_dicts", "unstack_state_dict"]


# ---------------------------------------------------------------------------------- stacking
@dataclass(frozen=True)
class StackedSpec:
    """The architecture shared by stacked members (what :class:`IWAE` is built from); a
    hashable key to group models by."""

    x_dim: int
    layers: tuple[tuple[int, ...], ...]
    likelihood: str

    @classmethod
    def of(cls, model: IWAE) -> StackedSpec:
        return cls(model.x_dim, tuple(tuple(s) for s in model.layers), model.likelihood)

    @property
    def n_hidden(self) -> list[int]:
        return [len(s) - 1 for s in self.layers]

    @property
    def latent_dims(self) -> list[int]:
        return [s[-1] for s in self.layers]

    def build(self) -> IWAE:
        return IWAE(self.x_dim, [list(s) for s in self.layers], likelihood=self.likelihood)

    def linears(self) -> list[tuple[str, str]]:
        """(kind, module prefix) of every linear map of the model: "hidden" (followed by
        tanh), "head" (a Gaussian's mean and log_std, fused into one map), "logits"."""
        out: list[tuple[str, str]] = []
        L = len(self.layers)

        def mlp(prefix: str, n_hidden: int, last: str) -> None:
            out.extend(("hidden", f"{prefix}.body.{2 * j}") for j in range(n_hidden))
            out.append((last, prefix if last == "head" else prefix + ".logits"))

        for level in range(L):
            mlp(f"encoder.{level}", self.n_hidden[level], "head")
        for i in range(L - 1):
            mlp(f"decoder.{i}", self.n_hidden[L - 1 - i], "head")
        mlp(f"decoder.{L - 1}", self.n_hidden[0],
            "logits" if self.likelihood == "bernoulli" else "head")
        return out


def stack_state_dicts(states: Sequence[dict[str, Tensor]],
                      spec: StackedSpec) -> dict[str, Tensor]:
    """The stacked layout of M ``IWAE`` state dicts of architecture ``spec``.

    Every linear map ``prefix`` becomes ``prefix.wt: [M, in, out]`` (the transposed weight, so
    ``x @ wt`` needs no copy and its gradient comes out contiguous) and ``prefix.b: [M, out]``;
    a Gaussian's ``mean`` and ``log_std`` maps are fused: ``wt: [M, in, 2d]``, ``b: [M, 2d]``.
    """
    out: dict[str, Tensor] = {}
    for kind, prefix in spec.linears():
        if kind == "head":
            ws = [torch.cat([s[prefix + ".mean.weight"], s[prefix + ".log_std.weight"]]).t()
                  for s in states]
            bs = [torch.cat([s[prefix + ".mean.bias"], s[prefix + ".log_std.bias"]])
                  for s in states]
        else:
            ws = [s[prefix + ".weight"].t() for s in states]
            bs = [s[prefix + ".bias"] for s in states]
        out[prefix + ".wt"] = torch.stack([w.detach() for w in ws]).contiguous()
        out[prefix + ".b"] = torch.stack([b.detach() for b in bs]).contiguous()
    return out


def unstack_state_dict(stacked: dict[str, Tensor], i: int,
                       spec: StackedSpec) -> dict[str, Tensor]:
    """Member i's ``IWAE`` state dict (copies) from the stacked layout."""
    out: dict[str, Tensor] = {}
    for kind, prefix in spec.linears():
        w = stacked[prefix + ".wt"][i].detach().t()
        b = stacked[prefix + ".b"][i].detach()
        if kind == "head":
            d = w.shape[0] // 2
            out[prefix + ".mean.weight"] = w[:d].clone()
            out[prefix + ".log_std.weight"] = w[d:].clone()
            out[prefix + ".mean.bias"] = b[:d].clone()
            out[prefix + ".log_std.bias"] = b[d:].clone()
        else:
            out[prefix + ".weight"] = w.clone()
            out[prefix + ".bias"] = b.clone()
    return out
