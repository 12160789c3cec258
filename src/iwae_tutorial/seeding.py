"""One seed, many independent random streams: a stream's seed is a hash of (seed, purpose).

A run with ``seed`` s draws its initial weights, its data order, its binarization and its
sampling noise from four streams. Seeding them with s, s + 1, s + 2 would make neighbouring
runs share streams in different roles (run 0's noise would be run 1's binarization); seeding
each with a hash of ``(s, purpose)`` gives every (seed, purpose) pair its own stream.

    >>> stream_seed(0, "noise") != stream_seed(1, "binarize")
    True

The evaluation's fixed draws keep their small seeds (the test images are binarized with
``eval_seed``, the paper's active-unit count draws with ``eval_seed + 1``): no hashed stream
is a small integer, so they share no stream with training.
"""

from __future__ import annotations

import hashlib

__all__ = ["PURPOSES", "stream_seed"]

#: every purpose a stream is drawn for (a typo is an error, not a new stream)
PURPOSES = (
    "weights",  # the initial parameters (runs.build_model)
    "order",  # the data order of each epoch
    "binarize",  # the dynamic binarization of the training images
    "noise",  # the reparameterization noise of training
    "eval-noise",  # the noise of L_k when reproduce scores a model
    "device-noise",  # the fast trainer's device generator (fast.fit_fast, noise="device")
)


def stream_seed(seed: int, purpose: str) -> int:
    """The seed of the ``purpose`` stream of a run seeded ``seed``: the first 63 bits of
    SHA-256 of ``"<seed>/<purpose>"`` (a valid ``torch.Generator.manual_seed``)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}; one of {', '.join(PURPOSES)}")
    digest = hashlib.sha256(f"{int(seed)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
