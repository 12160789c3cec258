"""``reproduce`` under PyTorch's launcher: ranks, the process group, shards and gathering.

``torchrun --nproc-per-node W -m iwae_tutorial reproduce ...`` starts W processes (ranks) with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in their environment. Each rank trains and scores
its share of every fleet's configurations (whole training groups), in its own state folder
(``<run>/rank-R-of-W/``); at the end of an invocation the ranks exchange their scored stages
once (:func:`gather`) and rank 0 writes the one result file. Without torchrun (or with
``WORLD_SIZE=1``) nothing here does anything: one process, the usual layout, no process group.

- :class:`Ranks`: this process's rank, the world size and the local rank (from the environment),
  its state folder and its device (``cuda:LOCAL_RANK`` on CUDA).
- :func:`process_group`: ``init_process_group`` (gloo on the CPU, NCCL on CUDA) when the world
  has more than one rank, torn down at the end.
- :func:`shard`, :func:`shard_fleet`: a rank's share of a fleet, whole training groups (so that
  every member keeps a single process's numbers bit for bit).
- :func:`merge_shards`: one record of the whole fleet from the ranks' records of their shares.
- :func:`gather`, :func:`gather_stages`, :func:`barrier`: the collectives (no-ops for one rank).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported where it is used: the CLI's parser needs this module
    import torch

__all__ = ["Ranks", "WorldSizeError", "process_group", "shard", "shard_fleet",
           "merge_shards", "gather", "gather_stages", "barrier", "TIMEOUT"]

T = TypeVar("T")

#: how long a rank waits in a collective for the others: a rank whose shard is done waits at
#: the end of the run for the slowest one (hours in a long run without --max-minutes)
TIMEOUT = timedelta(days=7)


class WorldSizeError(ValueError):
    """More ranks than the work can be split into: every rank raises it alike, so only rank 0
    reports it (``quiet`` on the others)."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.quiet = rank != 0


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the ranks torchrun started (one rank without it)."""

    rank: int = 0  # 0 .. world - 1
    world: int = 1  # WORLD_SIZE: the number of ranks
    local_rank: int = 0  # the rank on this machine: its GPU

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks:
        """From ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (torchrun sets them); one rank when
        ``WORLD_SIZE`` is unset. A ValueError (one line) when they are malformed."""
        env = os.environ if env is None else env
        text = {k: env.get(k, "").strip() for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        if not text["WORLD_SIZE"]:
            return cls()
        try:
            world = int(text["WORLD_SIZE"])
            rank = int(text["RANK"] or 0)
            local = int(text["LOCAL_RANK"] or rank)
        except ValueError:
            raise ValueError(f"WORLD_SIZE={text['WORLD_SIZE']!r}, RANK={text['RANK']!r}, "
                             f"LOCAL_RANK={text['LOCAL_RANK']!r}: not whole numbers; launch "
                             "with torchrun or unset them") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: a rank must "
                             "be in 0..WORLD_SIZE-1; launch with torchrun or unset them")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the result."""
        return self.rank == 0

    def state_dir(self, run_dir: Path) -> Path:
        """This rank's state folder: ``run_dir`` itself for one rank (the usual layout),
        ``run_dir/rank-R-of-W`` otherwise (another world size starts afresh)."""
        return run_dir if self.world == 1 else run_dir / f"rank-{self.rank}-of-{self.world}"

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` (no index) is ``cuda:LOCAL_RANK`` when there are several ranks."""
        import torch

        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """The default process group for ``ranks`` (gloo for a CPU ``device``, NCCL for CUDA,
    rendezvous from torchrun's ``MASTER_ADDR``/``MASTER_PORT``), destroyed at the end; nothing
    for one rank or when a group already exists (the caller's)."""
    import torch
    import torch.distributed as dist

    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                            world_size=ranks.world, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(groups: Sequence[Hashable], ranks: Ranks, offset: int = 0,
          what: str = "training groups in a fleet (the configurations with one k train "
                      "stacked)") -> list[int]:
    """This rank's items: ``groups[i]`` is item i's group; whole groups are dealt round robin
    in the order they first appear, the first to rank ``offset % world``. -> the indices of
    this rank's items, in order. A :class:`WorldSizeError` when there are fewer groups than
    ranks (some rank would get nothing)."""
    order = list(dict.fromkeys(groups))
    if len(order) < ranks.world:
        raise WorldSizeError(f"{ranks.world} ranks for {len(order)} {what}: launch at most "
                             f"{len(order)} (torchrun --nproc-per-node {len(order)})", ranks.rank)
    mine = {g for j, g in enumerate(order) if (j + offset) % ranks.world == ranks.rank}
    return [i for i, g in enumerate(groups) if g in mine]


def shard_fleet(configs: Sequence[T], aliases: Mapping[str, tuple[Any, int]], ranks: Ranks,
                group: Callable[[T], Hashable], offset: int = 0
                ) -> tuple[list[int], list[T], dict[str, tuple[Any, int]]]:
    """This rank's share of a fleet: whole training groups (``group(config)``: the members that
    train stacked together; a member's numbers depend on its group's company, not on other
    groups', so each keeps a single process's numbers bit for bit), see :func:`shard`. ->
    (their indices in ``configs``, those configs, the ``aliases`` (name -> (config, index of
    the trained twin)) whose twin is among them, re-indexed)."""
    idx = shard([group(c) for c in configs], ranks, offset)
    return (idx, [configs[i] for i in idx],
            {name: (c, idx.index(t)) for name, (c, t) in aliases.items() if t in idx})


def merge_shards(pieces: Sequence[Mapping[str, Any]], per_member: Sequence[str],
                 per_rank: Sequence[str] = (), slowest: Sequence[str] = (),
                 index: str = "members") -> dict[str, Any]:
    """One record of all members from ``pieces[r]``, rank r's record of its shard, whose field
    ``index`` lists its members' places among all: the fields ``per_member`` (one value per
    member: a list, or a tensor ``[members, ...]``) in the members' order; the fields
    ``per_rank`` (a rank's one value, e.g. its folder) per member under ``"by_member"``:
    ``{field: [the member's rank's value, ...]}``; the fields ``slowest`` (dicts of seconds)
    the largest over the ranks (they ran at once); the rest rank 0's."""
    import torch

    places = [j for p in pieces for j in p[index]]
    if sorted(places) != list(range(len(places))):
        raise ValueError(f"the ranks' shards do not make one fleet (members {sorted(places)})")
    order = sorted(range(len(places)), key=places.__getitem__)  # member j is flat[order[j]]
    out = {k: v for k, v in pieces[0].items() if k != index}
    for key in per_member:
        flat = [v for p in pieces for v in p[key]]
        rows = [flat[i] for i in order]
        out[key] = torch.stack(rows) if isinstance(pieces[0][key], torch.Tensor) else rows
    out["by_member"] = {}
    for key in per_rank:
        flat = [p[key] for p in pieces for _ in p[index]]
        out["by_member"][key] = [flat[i] for i in order]
    for key in slowest:
        out[key] = {s: max(p[key][s] for p in pieces) for s in pieces[0][key]}
    return out


def gather(obj: T, ranks: Ranks) -> list[T]:
    """Every rank's ``obj`` (picklable; tensors come back on the CPU as sent), in rank order, on
    every rank: a collective, each rank calls it once. ``[obj]`` for one rank."""
    if ranks.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def gather_stages(done: dict[str, dict], finished: bool, ranks: Ranks, **merge: Any
                  ) -> tuple[dict[str, dict] | None, bool]:
    """The end of an invocation on every rank: its scored stages ``done`` (key -> its shard's
    record) and whether it ``finished`` its shard, exchanged (one collective). -> (on rank 0 the
    stages that every rank scored, merged by :func:`merge_shards` with ``merge``; None on the
    others, whether every rank finished)."""
    shards = gather((done, finished), ranks)
    all_finished = all(f for _, f in shards)
    if not ranks.is_main:
        return None, all_finished
    common = set.intersection(*(set(d) for d, _ in shards))
    return {key: merge_shards([d[key] for d, _ in shards], **merge) for key in common}, \
        all_finished


def barrier(ranks: Ranks) -> None:
    """Wait until every rank gets here (nothing for one rank)."""
    if ranks.world == 1:
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        import torch

        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
