"""Evaluation: the test log-likelihood estimate L_5000 and the count of active units."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .models import IWAE

__all__ = ["log_likelihood", "active_units", "ActiveUnits", "LogMeanExpAccumulator",
           "paper_active_units", "ACTIVE_UNITS_N", "ACTIVE_UNITS_THRESHOLD"]

#: the paper's active-unit protocol (the authors' code): the first 500 training examples,
#: binarized once, a unit is active when its variance exceeds 0.01
ACTIVE_UNITS_N = 500
ACTIVE_UNITS_THRESHOLD = 0.01


class LogMeanExpAccumulator:
    """Streaming log-mean-exp over chunks of samples, in float64.

    ``add(log_w_chunk: [c, batch])`` any number of times, then ``value() -> [batch]`` equals
    ``log_mean_exp(cat(chunks), dim=0)`` without holding all samples in memory.
    """

    def __init__(self) -> None:
        self.lse: Tensor | None = None
        self.count = 0

    def add(self, log_w: Tensor) -> None:
        chunk = torch.logsumexp(log_w.double(), dim=0)
        self.lse = chunk if self.lse is None else torch.logaddexp(self.lse, chunk)
        self.count += log_w.shape[0]

    def value(self) -> Tensor:
        if self.lse is None:
            raise ValueError("no samples were added")
        return self.lse - math.log(self.count)


@torch.no_grad()
def log_likelihood(
    model: IWAE,
    x: Tensor,
    k: int = 5000,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_rows: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    kernel: str = "auto",
) -> Tensor:
    """Per-example estimates of log p(x) by L_k (the paper uses k = 5000), in float64.

    Examples are processed ``batch_size`` at a time and the ``k`` samples in chunks of
    ``chunk_size`` (default: as many as keep ``chunk_size * batch_size <= max_rows``), so memory
    stays bounded whatever ``k`` is. The chunked result equals the unchunked one for the same
    noise (the log-mean-exp is accumulated exactly, see :class:`LogMeanExpAccumulator`).

    ``kernel``: "reference" calls :meth:`IWAE.log_weights` chunk by chunk (any model with a
    ``log_weights(x, k, generator=)``); "fused" uses the fused forward pass of
    :func:`iwae_tutorial.fleet.log_likelihood_many` (q(h_1|x) once per batch, oneDNN matmuls on
    the CPU: about 2x faster; same noise, same result up to float rounding); "auto" picks
    "fused" for a plain :class:`IWAE` and "reference" otherwise.

    x: [n, x_dim] on any device (moved to the model's) -> [n] float64 on the CPU.
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of samples, got {k}")
    if kernel not in ("auto", "fused", "reference"):
        raise ValueError(f"kernel must be 'auto', 'fused' or 'reference', got {kernel!r}")
    if kernel == "auto":
        kernel = "fused" if type(model) is IWAE else "reference"
    if max_rows is None:  # rows of samples per forward pass: the fused kernel likes cache-sized
        max_rows = 8_000 if kernel == "fused" else 50_000
    n = x.shape[0]
    batch_size = max(1, min(batch_size, n))
    if chunk_size is None:
        chunk_size = max(1, min(k, max_rows // batch_size))
    if kernel == "fused":
        if not isinstance(model, IWAE):
            raise ValueError("kernel='fused' needs an iwae_tutorial.models.IWAE; use "
                             "kernel='reference' for other models")
        from .fleet import log_likelihood_many

        return log_likelihood_many([model], x, k, batch_size=batch_size, chunk_size=chunk_size,
                                   generators=[generator], progress=progress)[0]
    device = model.device
    was_training = model.training
    model.eval()
    out = torch.empty(n, dtype=torch.float64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="example", desc=f"L_{k}", leave=False)
    try:
        for start in range(0, n, batch_size):
            xb = x[start:start + batch_size].to(device)
            acc = LogMeanExpAccumulator()
            done = 0
            while done < k:
                c = min(chunk_size, k - done)
                acc.add(model.log_weights(xb, c, generator=generator))
                done += c
            out[start:start + len(xb)] = acc.value().cpu()
            if bar is not None:
                bar.update(len(xb))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return out


class ActiveUnits(NamedTuple):
    """Per stochastic layer: the number of active units and Var_x E_q[h_j | x] of each unit."""

    counts: list[int]
    variances: list[Tensor]


@torch.no_grad()
def active_units(
    model: IWAE,
    x: Tensor,
    threshold: float = 0.01,
    *,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
) -> ActiveUnits:
    """Count the units whose posterior mean varies across data points (Burda et al., Sec. 5.2).

    Unit j of layer l is active when Var_x(E_q[h_j | x]) > ``threshold``. For layer l > 1
    the mean is conditioned on one sample of the layer below, as in the authors' code.

    x: [n, x_dim] -> ActiveUnits(counts=[int per layer], variances=[[d_l] per layer]).
    """
    device = model.device
    means: list[list[Tensor]] = []
    for start in range(0, x.shape[0], batch_size):
        layers = model.encode(x[start:start + batch_size].to(device), sample=True,
                              generator=generator)
        for level, (mean, _std) in enumerate(layers):
            if len(means) <= level:
                means.append([])
            means[level].append(mean.double().cpu())
    variances = [torch.cat(m).var(dim=0, unbiased=True) for m in means]
    counts = [int((v > threshold).sum()) for v in variances]
    return ActiveUnits(counts, variances)


def paper_active_units(model: IWAE, x_train: Tensor, binarize: bool, seed: int = 0) -> tuple[
        ActiveUnits, int]:
    """Active units counted the paper's way: on the first :data:`ACTIVE_UNITS_N` training
    examples, binarized once (when the data set is binarized during training) with a generator
    seeded ``seed + 1`` on the model's device, which then draws the layer samples; threshold
    :data:`ACTIVE_UNITS_THRESHOLD`.

    x_train: [n, x_dim] -> (ActiveUnits, number of examples used)
    """
    device = model.device
    g = torch.Generator(device=device).manual_seed(seed + 1)
    x = x_train[:ACTIVE_UNITS_N].to(device)
    if binarize:
        x = torch.bernoulli(x, generator=g)
    return active_units(model, x, ACTIVE_UNITS_THRESHOLD, generator=g), int(x.shape[0])
