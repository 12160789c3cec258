"""Counter-based random numbers: a pure function of (seed, counter), drawn for many streams in
one tensor operation, on any device, and inside a captured CUDA graph.

``torch.randn(..., generator=g)`` keeps its state in the generator, so M members with their own
generators need M calls per draw, from Python, outside a CUDA graph. Here a random number is
instead a hash of (the member's seed, a purpose, a counter such as the global step, the
element's index): the members' streams are drawn together (``seeds: [M]`` gives ``[M, ...]``),
a member's numbers depend on its seed only (not on which other members share its batch), and
a step counter kept in a device tensor advances inside a graph, so a block of steps can be
captured and replayed with fresh noise each time.

The hash is 32-bit integer mixing (Wellons' "lowbias32" finaliser, applied in layers), written
with int64 tensor arithmetic that never overflows. Uniforms have 23 random bits in (0, 1);
normals come from the Box-Muller transform of two uniforms. It is for Monte Carlo noise, not
cryptography; ``tests/test_noise.py`` checks moments, independence across seeds, purposes and
steps, and the shapes.

Shapes: ``seeds: [M]`` int64, ``counter``: an int or a 0-d int64 tensor (on the same device),
``shape``: the per-member shape -> ``[M, *shape]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PURPOSES", "uniform", "normal", "bernoulli", "permutation", "seed_tensor"]

_MASK = 0xFFFFFFFF
#: distinct constants so that the data order, the binarization and the noise never share a stream
PURPOSES = {"order": 0x3C6EF372, "binarize": 0x9E3779B9, "noise": 0xBB67AE85}
_SECOND = 0xA54FF53A  # the second uniform of Box-Muller: another stream of the same purpose


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32, without int64 overflow (16-bit halves)."""
    hi = ((x >> 16) * c) & 0xFFFF
    return ((hi << 16) + (x & 0xFFFF) * c) & _MASK


def _mix(x: Tensor) -> Tensor:
    """A 32-bit avalanche finaliser (lowbias32): every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_tensor(seeds: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """Member seeds as an int64 tensor (any Python ints; folded to 32 bits by hashing)."""
    folded = [(int(s) & _MASK) ^ ((int(s) >> 32) * 0x9E3779B1 & _MASK) for s in seeds]
    return torch.tensor(folded, dtype=torch.int64, device=device)


def _bits(seeds: Tensor, purpose: int, counter: int | Tensor, shape: Sequence[int]) -> Tensor:
    """[M, *shape] hashed 32-bit integers (int64 tensor in [0, 2^32)) of stream ``purpose``."""
    n = math.prod(shape)
    idx = torch.arange(n, dtype=torch.int64, device=seeds.device)
    if not isinstance(counter, Tensor):
        counter = torch.tensor(int(counter), dtype=torch.int64, device=seeds.device)
    c = counter.to(torch.int64)
    key = _mix(_mix(seeds ^ purpose) ^ (c & _MASK))  # [M]
    key = _mix(key ^ ((c >> 32) & _MASK))
    h = _mix(_mix(idx.unsqueeze(0) ^ key.unsqueeze(1)) + key.unsqueeze(1))  # [M, n]
    return h.view(len(seeds), *shape)


def uniform(seeds: Tensor, purpose: str, counter: int | Tensor, shape: Sequence[int],
            dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform numbers in (0, 1) (23 random bits): [M, *shape]."""
    return _to_unit(_bits(seeds, PURPOSES[purpose], counter, shape), dtype)


def _to_unit(h: Tensor, dtype: torch.dtype) -> Tensor:
    return ((h >> 9).to(dtype) + 0.5) * (1.0 / (1 << 23))  # in (0, 1) even in float32


def normal(seeds: Tensor, purpose: str, counter: int | Tensor, shape: Sequence[int],
           dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal numbers (Box-Muller of two independent uniforms): [M, *shape]."""
    u1 = _to_unit(_bits(seeds, PURPOSES[purpose], counter, shape), torch.float32)
    u2 = _to_unit(_bits(seeds, PURPOSES[purpose] ^ _SECOND, counter, shape), torch.float32)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.to(dtype)


def bernoulli(probs: Tensor, seeds: Tensor, counter: int | Tensor) -> Tensor:
    """One Bernoulli draw per entry of ``probs: [M, *shape]`` (values 0./1., probs' dtype)."""
    u = uniform(seeds, "binarize", counter, probs.shape[1:], torch.float32)
    return (u < probs).to(probs.dtype)


def permutation(seeds: Tensor, counter: int | Tensor, n: int) -> Tensor:
    """A random permutation of range(n) per member (argsort of hashed keys): [M, n] int64."""
    return torch.argsort(_bits(seeds, PURPOSES["order"], counter, (n,)), dim=1)
