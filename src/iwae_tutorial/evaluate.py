"""Evaluation: which test images are scored, the test log-likelihood estimate L_5000 and the
count of active units.

:func:`log_likelihood` evaluates one model; :func:`log_likelihood_many` many at once (models of
the same architecture stacked, by the fused pass of :mod:`iwae_tutorial.fleet.stacked`, which the
fleet trainer also uses: evaluation does not depend on the trainer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .data import Dataset
from .fleet.stacked import (
    StackedSpec,
    encode_first_layer,
    resolve_gemm,
    stack_state_dicts,
    stacked_log_weights,
)
from .models import IWAE

__all__ = ["eval_indices", "eval_subset_text", "eval_images", "log_likelihood",
           "log_likelihood_many", "chunk_size_for", "active_units", "ActiveUnits",
           "LogMeanExpAccumulator", "paper_active_units", "ACTIVE_UNITS_N",
           "ACTIVE_UNITS_THRESHOLD", "reconstruction_loss"]

#: the paper's active-unit protocol (the authors' code): the first 500 training examples,
#: binarized once, a unit is active when its variance exceeds 0.01
ACTIVE_UNITS_N = 500
ACTIVE_UNITS_THRESHOLD = 0.01


def eval_indices(ds: Dataset, n: int | None = None) -> Tensor:
    """Which test images a score on ``n`` of them uses: the first ``n``, or, when the test
    split is ordered by class (``ds.test_by_class``), ``n`` evenly spaced ones (every class in
    its share). -> [n] indices"""
    total = ds.x_test.shape[0]
    n = total if n is None else min(int(n), total)
    if ds.test_by_class and n < total:
        return torch.div(torch.arange(n) * total, n, rounding_mode="floor")
    return torch.arange(n)


def eval_subset_text(ds: Dataset, n: int | None = None) -> str:
    """How :func:`eval_indices` chose the images, in words."""
    total = ds.x_test.shape[0]
    n = total if n is None else min(int(n), total)
    if n == total:
        return "all test images"
    if ds.test_by_class:
        return (f"{n} evenly spaced of the {total} test images (the test split is ordered by "
                "class)")
    return f"the first {n} of the {total} test images"


def eval_images(ds: Dataset, n: int | None = None, seed: int = 0) -> Tensor:
    """The ``n`` test images of :func:`eval_indices` as they are scored: binarized once with a
    fixed seed (a CPU generator) when the data set is binarized during training, as in the
    authors' code.

    -> [n, x_dim] on the CPU
    """
    x = ds.x_test if n is None else ds.x_test[eval_indices(ds, n)]
    if ds.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


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
    :func:`log_likelihood_many` (q(h_1|x) once per batch, oneDNN matmuls on the CPU: about 2x
    faster; same noise, same result up to float rounding); "auto" picks
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


def chunk_size_for(k: int, batch_size: int, stacked: int, max_rows: int) -> int:
    """:func:`log_likelihood_many`'s default chunk of samples: as many as keep ``stacked``
    models x chunk x ``batch_size`` images <= ``max_rows`` (at least 1, at most ``k``). The
    chunks decide how each model's noise is drawn, so a model's L_k depends on it."""
    return max(1, min(k, max_rows // (batch_size * stacked)))


@torch.no_grad()
def log_likelihood_many(
    models: Sequence[IWAE],
    x: Tensor,
    k: int = 5000,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_rows: int = 8_000,
    generators: Sequence[torch.Generator | None] | None = None,
    progress: bool = False,
    start: int = 0,
    stop: int | None = None,
    gemm: str = "auto",
) -> Tensor:
    """L_k estimates of log p(x) of many models at once: [len(models), n] float64 (CPU).

    Models with the same architecture are stacked and evaluated together with batched
    matmuls; examples go ``batch_size`` at a time and the ``k`` samples in chunks of
    ``chunk_size`` (default: as many as keep ``members x chunk x batch <= max_rows`` for the
    largest group of same-architecture models), accumulated exactly in float64. q(h_1|x)
    is computed once per batch of examples, not once per chunk.

    With ``generators`` (one per model) each model draws its noise from its own generator in
    the same order as :func:`log_likelihood` does, so with the same ``batch_size`` and
    ``chunk_size`` the result equals calling it model by model (up to float rounding).
    ``start``/``stop`` evaluate only examples [start:stop] (the returned tensor still has n
    columns; the others are NaN): used to stream a long evaluation in pieces.
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of samples, got {k}")
    models = list(models)
    if not models:
        raise ValueError("no models to evaluate")
    device = models[0].device
    dtype = next(models[0].parameters()).dtype
    gemm = resolve_gemm(gemm, device, dtype)
    n = x.shape[0]
    stop = n if stop is None else min(stop, n)
    batch_size = max(1, min(batch_size, n))
    if generators is None:
        generators = [None] * len(models)
    if len(generators) != len(models):
        raise ValueError("give one generator per model (or none)")
    out = torch.full((len(models), n), float("nan"), dtype=torch.float64)
    groups: dict[StackedSpec, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(StackedSpec.of(m), []).append(i)
    if chunk_size is None:  # max_rows rows of samples per group at a time
        chunk_size = chunk_size_for(k, batch_size, max(len(idx) for idx in groups.values()),
                                    max_rows)
    stacked = {spec: stack_state_dicts([models[i].state_dict() for i in idx], spec)
               for spec, idx in groups.items()}
    stacked = {spec: {nm: t.to(device) for nm, t in p.items()} for spec, p in stacked.items()}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, unit="example", desc=f"L_{k} x {len(models)}",
                   leave=False)
    try:
        for b0 in range(start, stop, batch_size):
            xb = x[b0:min(b0 + batch_size, stop)].to(device=device, dtype=dtype)
            nb = xb.shape[0]
            for spec, idx in groups.items():
                p = stacked[spec]
                Mg = len(idx)
                xs = xb.unsqueeze(0).expand(Mg, nb, xb.shape[1]).contiguous()
                q0 = encode_first_layer(p, spec, xs, gemm)
                accs = [LogMeanExpAccumulator() for _ in idx]
                done = 0
                while done < k:
                    c = min(chunk_size, k - done)
                    eps = [torch.empty(Mg, c, nb, d, device=device, dtype=xs.dtype)
                           for d in spec.latent_dims]
                    for j, i in enumerate(idx):
                        for e in eps:  # layer order, as IWAE.sample_q draws them
                            torch.randn(e.shape[1:], generator=generators[i], out=e[j])
                    lw = stacked_log_weights(p, spec, xs, eps, q0=q0, gemm=gemm)  # [Mg, c, nb]
                    for j in range(Mg):
                        accs[j].add(lw[j])
                    done += c
                for j, i in enumerate(idx):
                    out[i, b0:b0 + nb] = accs[j].value().cpu()
            if bar is not None:
                bar.update(nb)
    finally:
        if bar is not None:
            bar.close()
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


@torch.no_grad()
def reconstruction_loss(
    model: IWAE,
    x: Tensor,
    n_samples: int = 10,
    *,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The reconstruction loss -log p(x | h_1) with h ~ q(h | x), per image, averaged over
    ``n_samples`` draws (in nats; float64 accumulation). It measures how well the code
    reconstructs x, not how probable x is: no prior and no entropy of q enter it.

    x: [n, x_dim] -> [n] (on the CPU)
    """
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(model.device)
        hs, _ = model.sample_q(xb, n_samples, generator=generator)
        out.append(-model.log_px_given_h(xb, hs[0]).double().mean(0).cpu())
    return torch.cat(out)
