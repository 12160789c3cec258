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

__all__ = ["PURPOSES", "uniform", "normal", "bernoulli", "permutation", "seed_tensor",
           "CounterNoise", "DeviceNoise", "LAYERS_MAX"]

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


# ------------------------------------------------------------ the fast trainer's noise sources
#: noise counters of the fast trainer: global step * LAYERS_MAX + stochastic layer
LAYERS_MAX = 16


class CounterNoise:
    """The reference noise: the hash above, a hash of (member seed, step,
    element). ``seeds: [M]`` in the fleet's internal order, ``group_seeds``: their split by
    group."""

    kind = "counter"

    def __init__(self, seeds: Tensor, group_sizes: list[int]):
        self.seeds, self.group_seeds = seeds, list(seeds.split(group_sizes))

    def order(self, epoch: int, n: int) -> Tensor:  # [M, n]
        return permutation(self.seeds, epoch, n)

    def binarize(self, x: Tensor, gstep: Tensor) -> Tensor:  # x: [M, B, D]
        return bernoulli(x, self.seeds, gstep)

    def normal(self, group: int, level: int, shape: tuple[int, ...], dtype: torch.dtype,
               gstep: Tensor) -> Tensor:  # [M_g, *shape]
        return normal(self.group_seeds[group], "noise", gstep * LAYERS_MAX + level,
                            shape, dtype)

    def state(self) -> Tensor | None:
        return None  # a function of the step: nothing to save

    def load_state(self, state: Tensor | None) -> None:
        pass


class DeviceNoise:
    """``torch.rand``/``randn`` on the device's generator: one kernel per draw and group.
    On CUDA the default generator (graph-safe), on the CPU a generator of its own."""

    kind = "device"

    def __init__(self, seed: int, device: torch.device, group_sizes: list[int]):
        self.device, self.group_sizes = device, group_sizes
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.gen = torch.cuda.default_generators[index]
            self.draw_gen = None  # the default generator, as CUDA graphs want it
        else:
            self.gen = self.draw_gen = torch.Generator(device)
        self.gen.manual_seed(seed)

    def order(self, epoch: int, n: int) -> Tensor:  # [M, n]; outside any graph
        return torch.stack([torch.randperm(n, generator=self.draw_gen, device=self.device)
                            for _ in range(sum(self.group_sizes))])

    def binarize(self, x: Tensor, gstep: Tensor) -> Tensor:
        u = torch.rand(x.shape, generator=self.draw_gen, device=x.device)
        return (u < x).to(x.dtype)

    def normal(self, group: int, level: int, shape: tuple[int, ...], dtype: torch.dtype,
               gstep: Tensor) -> Tensor:
        return torch.randn((self.group_sizes[group], *shape), generator=self.draw_gen,
                           device=self.device, dtype=dtype)

    def state(self) -> Tensor:
        return self.gen.get_state()

    def load_state(self, state: Tensor | None) -> None:
        if not (isinstance(state, Tensor) and state.dtype == torch.uint8):
            raise ValueError("the saved state lacks the device generator's state")
        self.gen.set_state(state)
