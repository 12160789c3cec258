"""Train many configurations at once, in one process: the fleet trainer.

Table 1 of Burda et al. (2015) is 12 models (VAE/IWAE x k in {1, 5, 50} x 1 or 2 stochastic
layers). Trained one after another with :func:`iwae_tutorial.train.fit`, each step of each model
runs a few hundred small kernels and a Python loop around them. The fleet stacks the members
instead:

- members with the same architecture and the same ``k`` form a *group*; a group's parameters
  are stacked, ``[M, ...]`` (weights transposed, a Gaussian's mean and log-std maps fused),
  and its forward and backward passes are a handful of batched matmuls over all M members at
  once with fused element-wise work (custom autograd functions :class:`_Linear` and
  :class:`_BernoulliOut`); on the CPU the large products go to oneDNN (see
  :func:`onednn_available`: ~2x MKL's speed on the AMD CPU of this project);
- one Adam (fused when the device supports it) updates every parameter of every member:
  Adam is element-wise, so one Adam over stacked tensors is M independent Adams;
- every member keeps its own objective (members of a group may mix "vae" and "iwae"), its own
  ``k``, data order, binarization and noise (the three generators of
  :func:`iwae_tutorial.train.make_generators`, seeded by the member's seed) and its own Adam
  moments. A member's result equals :func:`~iwae_tutorial.train.fit` of that model alone
  with the same seed, up to float rounding (``tests/test_fleet.py`` checks it).

On CUDA the step (forward, backward, Adam) is captured once in a CUDA graph and replayed; the
data, the binarization and the noise stay on the device, the random draws are made eagerly
into the graph's static buffers with the members' own generators (so they are exactly those of
``fit``), and the host synchronises once per epoch (to log). That path is written to be correct
by construction but has not been measured or run in this repository's tests (no GPU).

Public API
----------
- :class:`FleetMember`: what a member is (objective, k, seed, name; the layers are the
  model's).
- :class:`Fleet`: ``Fleet(models, members)`` or :meth:`Fleet.from_configs`;
  :meth:`Fleet.fit` (checkpointed, resumable, stoppable by time or signal);
  :meth:`Fleet.model` (a member as a plain :class:`~iwae_tutorial.models.IWAE`);
  :meth:`Fleet.save_members` (per-member run directories readable by
  :func:`iwae_tutorial.experiments.load_run`).
- :func:`fleet_log_weights`: log-weights of stacked members, ``[M, k, batch]``.
- :func:`log_likelihood_many`: L_k (k = 5000) for many models at once, batched over examples
  and streamed over samples; per member it equals :func:`iwae_tutorial.evaluate.log_likelihood`
  given the same generator, batch and chunk sizes.
- :func:`table1_configs`: the 12 configurations of Table 1 as
  :class:`~iwae_tutorial.experiments.RunConfig`.
- :func:`stack_state_dicts` / :func:`unstack_state_dict`: between ``IWAE`` state dicts and
  the fleet's stacked layout; :func:`tune_malloc`: glibc tuning for CPU training processes.

Example::

    from iwae_tutorial.experiments import load_dataset
    from iwae_tutorial.fleet import Fleet, table1_configs

    ds = load_dataset("mnist")
    cfgs = table1_configs("mnist", epochs=4)
    fleet = Fleet.from_configs(cfgs, ds, "cpu")
    res = fleet.fit(ds.x_train, schedule=cfgs[0].schedule(), run_dir="runs/t1")
    model = fleet.model("mnist-iwae-k50-2L-s0")  # a plain IWAE
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoints import RunDirLock, save_tensors, sync_log, write_json_atomic
from .models import IWAE
from .objectives import LOG_W_OBJECTIVES
from .schedule import Stage, lr_at, resolve_schedule, schedule_epochs
from .train import (
    CHECKPOINT_NAME,
    LOG_NAME,
    TrainingDivergedError,
    check_resumable,
    check_state,
    data_digest,
    fingerprint,
    load_checkpoint,
    make_generators,
)

__all__ = [
    "FleetMember", "Fleet", "FitResult", "fleet_log_weights", "log_likelihood_many",
    "table1_configs", "stack_state_dicts", "unstack_state_dict", "FLEET_CHECKPOINT",
    "onednn_available", "tune_malloc", "StopFlag",
]

FLEET_CHECKPOINT = "fleet.pt"
_LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------------------- members
@dataclass(frozen=True)
class FleetMember:
    """One configuration trained in the fleet."""

    objective: str  # a key of objectives.LOG_W_OBJECTIVES ("vae", "iwae")
    k: int
    seed: int
    name: str = ""

    def __post_init__(self) -> None:
        if self.objective not in LOG_W_OBJECTIVES:
            raise ValueError(
                f"the fleet trains objectives that are functions of the log-weights: "
                f"{sorted(LOG_W_OBJECTIVES)}; got {self.objective!r} (train it with train.fit)")
        if int(self.k) < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")


def table1_configs(dataset: str = "mnist", *, epochs: int | None = None,
                   n_train: int | None = None, seed: int = 0, batch_size: int = 20) -> list:
    """The 12 configurations of Table 1 (VAE/IWAE x k in 1, 5, 50 x 1 or 2 stochastic layers),
    as :class:`~iwae_tutorial.experiments.RunConfig`, all with the same ``seed``."""
    from .experiments import ONE_LAYER, TWO_LAYERS, RunConfig

    out = []
    for layers in (ONE_LAYER, TWO_LAYERS):
        for objective in ("vae", "iwae"):
            for k in (1, 5, 50):
                out.append(RunConfig(dataset=dataset, objective=objective, k=k,
                                     layers=[list(s) for s in layers], epochs=epochs,
                                     n_train=n_train, seed=seed, batch_size=batch_size))
    return out


# ---------------------------------------------------------------------------------- stacking
@dataclass(frozen=True)
class _Spec:
    """The architecture of a group (what :class:`IWAE` is built from)."""

    x_dim: int
    layers: tuple[tuple[int, ...], ...]
    likelihood: str

    @classmethod
    def of(cls, model: IWAE) -> _Spec:
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


def stack_state_dicts(states: Sequence[dict[str, Tensor]], spec: _Spec) -> dict[str, Tensor]:
    """The fleet's stacked layout of M ``IWAE`` state dicts of architecture ``spec``.

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


def unstack_state_dict(stacked: dict[str, Tensor], i: int, spec: _Spec) -> dict[str, Tensor]:
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


# ------------------------------------------------------------------- fused stacked layers
#: per-member multiply-adds (rows x in x out) below which a GEMM goes to torch.bmm even when
#: oneDNN is available (its call overhead; measured on the 2-core machine of this project)
_ONEDNN_MIN_MACS = 2_000_000
_onednn_checked: bool | None = None


def onednn_available() -> bool:
    """Whether oneDNN's fp32 matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel
    behind Inductor's CPU linear layers) can be used, checked once against ``torch.mm``.

    On CPUs where PyTorch's default BLAS (MKL) does not use the best instruction set (e.g.
    MKL on AMD: ~100 GFLOP/s per core vs ~210 for oneDNN on the same core, measured on the
    2-core machine of this project), it is ~2x faster for the fleet's large GEMMs. Exact fp32
    arithmetic; only the summation order differs. Set ``IWAE_FLEET_GEMM=bmm`` to disable.
    """
    global _onednn_checked
    if _onednn_checked is None:
        ok = False
        try:
            if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                 "_linear_pointwise"):
                g = torch.Generator().manual_seed(0)
                a = torch.randn(160, 48, generator=g)
                w = torch.randn(40, 48, generator=g)
                b = torch.randn(40, generator=g)
                got = torch.ops.mkldnn._linear_pointwise(a, w, b, "none", [], "")
                gy = torch.randn(160, 24, generator=g)
                got_t = torch.ops.mkldnn._linear_pointwise(a.t(), gy.t(), None, "none", [], "")
                ok = (torch.allclose(got, torch.addmm(b, a, w.t()), rtol=1e-4, atol=1e-4)
                      and torch.allclose(got_t, a.t() @ gy, rtol=1e-4, atol=1e-4))
        except Exception:  # noqa: BLE001 - any failure means: do not use it
            ok = False
        _onednn_checked = ok
    return _onednn_checked


def tune_malloc(threshold: int = 32 << 20) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (Linux only).

    PyTorch's CPU allocator calls ``malloc`` for every temporary; with glibc's defaults a
    multi-megabyte temporary (the [k*B, 784] logits of a k = 50 model) is often given back to
    the OS when freed and page-faulted in again at the next step, which costs ~15% of a
    training step on the machine of this project (plain loop and fleet alike). This sets
    ``M_MMAP_THRESHOLD`` (to ``threshold``, at most 32 MiB) and ``M_TRIM_THRESHOLD`` (1 GiB)
    for the whole process; the price is that the process keeps its peak heap. Returns whether
    it was applied. Called by ``python -m iwae_tutorial reproduce`` and by the benchmarks (for
    both loops they compare); the library never calls it by itself.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, int(min(threshold, 32 << 20)))
        ok = libc.mallopt(m_trim_threshold, 1 << 30) and ok
        return bool(ok)
    except (OSError, AttributeError):  # not glibc
        return False


def _resolve_gemm(gemm: str, device: torch.device, dtype: torch.dtype) -> str:
    import os

    gemm = os.environ.get("IWAE_FLEET_GEMM", gemm) if gemm == "auto" else gemm
    if gemm not in ("auto", "onednn", "bmm"):
        raise ValueError(f"gemm must be 'auto', 'onednn' or 'bmm', got {gemm!r}")
    usable = device.type == "cpu" and dtype == torch.float32 and onednn_available()
    if gemm == "onednn" and not usable:
        raise ValueError("gemm='onednn' needs float32 on the CPU and a PyTorch built with "
                         "oneDNN (torch.backends.mkldnn.is_available())")
    if gemm == "auto":
        return "onednn" if usable else "bmm"
    return gemm


def _dnn(gemm: str, rows: int, k: int, n: int, factor: int = 1) -> bool:
    return gemm == "onednn" and rows * k * n >= factor * _ONEDNN_MIN_MACS


def _tanh_inplace(z: Tensor) -> Tensor:
    """tanh in place. On the CPU as 2 sigmoid(2z) - 1: PyTorch's CPU sigmoid is vectorised
    with a fast exp, its tanh goes through a slower path (4-10x slower on some CPUs);
    the two agree to ~2e-7 absolute in float32."""
    if z.device.type == "cpu":
        return z.mul_(2).sigmoid_().mul_(2).sub_(1)
    return z.tanh_()


def _onednn(a: Tensor, w: Tensor, b: Tensor | None, act: str) -> Tensor:
    """act(a @ w^T + b) by oneDNN; a: [R, K], w: [N, K] (any strides)."""
    return torch.ops.mkldnn._linear_pointwise(a, w, b, act, [], "")


def _mm_bias_act(a: Tensor, wt: Tensor, b: Tensor, tanh: bool, gemm: str) -> Tensor:
    """act(a @ wt + b): a [M, R, K], wt [M, K, N], b [M, N] -> [M, R, N] (new tensor)."""
    M, R = a.shape[0], a.shape[1]
    if _dnn(gemm, R, a.shape[2], wt.shape[2]):
        act = "tanh" if tanh else "none"
        return torch.stack([_onednn(a[j], wt[j].t(), b[j], act) for j in range(M)])
    z = torch.bmm(a, wt)
    z.add_(b.unsqueeze(1))
    return _tanh_inplace(z) if tanh else z


def _mm_nt(g: Tensor, wt: Tensor, gemm: str) -> Tensor:
    """g @ wt^T: g [M, R, N], wt [M, K, N] -> [M, R, K]."""
    if _dnn(gemm, g.shape[1], g.shape[2], wt.shape[1]):
        return torch.stack([_onednn(g[j], wt[j], None, "none") for j in range(g.shape[0])])
    return torch.bmm(g, wt.transpose(1, 2))


def _mm_tn(a: Tensor, g: Tensor, gemm: str) -> Tensor:
    """a^T @ g: a [M, R, K], g [M, R, N] -> [M, K, N] (the weight gradient)."""
    if _dnn(gemm, a.shape[1], a.shape[2], g.shape[2], 2):  # oneDNN copies a^T first
        return torch.stack([_onednn(a[j].t(), g[j].t(), None, "none")
                            for j in range(a.shape[0])])
    return torch.bmm(a.transpose(1, 2), g)


class _Linear(torch.autograd.Function):
    """y = act(a @ wt + b) for M stacked members: a [M, R, in], wt [M, in, out], b [M, out].

    Forward: one GEMM per member group (oneDNN with the bias and tanh fused, or one bmm with
    the bias added and tanh computed in place); backward: tanh_backward, two GEMMs and a sum.
    No broadcast copies, no transposed gradients to copy into the parameter's layout.
    """

    @staticmethod
    def forward(ctx, a: Tensor, wt: Tensor, b: Tensor, tanh: bool, gemm: str) -> Tensor:
        a = a.contiguous()
        z = _mm_bias_act(a, wt, b, tanh, gemm)
        ctx.tanh, ctx.gemm = tanh, gemm
        ctx.save_for_backward(a, wt, z if tanh else None)
        return z

    @staticmethod
    def backward(ctx, gy: Tensor):
        a, wt, y = ctx.saved_tensors
        gz = torch.ops.aten.tanh_backward(gy, y) if ctx.tanh else gy.contiguous()
        ga = _mm_nt(gz, wt, ctx.gemm) if ctx.needs_input_grad[0] else None
        gw = _mm_tn(a, gz, ctx.gemm) if ctx.needs_input_grad[1] else None
        gb = gz.sum(1) if ctx.needs_input_grad[2] else None
        return ga, gw, gb, None, None


def _softplus_sum(logits: Tensor) -> Tensor:
    """sum_j softplus(l_j) over the last dimension: [..., D] -> [...].

    softplus(l) = relu(l) - log sigmoid(|l|); the sigmoids lie in [1/2, 1), so their product
    over chunks of at most 100 values stays a normal float, and one log per chunk replaces
    one log per value (PyTorch's CPU softplus/log are ~2.5 ns per value on some CPUs, its
    sigmoid ~0.4). Agrees with F.softplus(l).sum(-1) to float rounding.
    """
    D = logits.shape[-1]
    relu = logits.clamp_min(0).sum(-1)
    s = logits.abs().sigmoid_()
    c = next((c for c in range(100, 31, -1) if D % c == 0), None)
    if c is None:  # no convenient divisor: whole chunks of 64, then the rest
        c = min(64, D)
    main = (D // c) * c
    out = relu - s[..., :main].unflatten(-1, (D // c, c)).prod(-1).log_().sum(-1)
    if main < D:
        out = out - s[..., main:].prod(-1).log_()
    return out


class _BernoulliOut(torch.autograd.Function):
    """log p(x | h_1) = sum_j x_j l_j - softplus(l_j), l = a @ wt + b, for M members.

    a: [M, k*B, hid] (the generative net's last hidden layer), wt: [M, hid, D], b: [M, D],
    x: [M, B, D] -> [M, k, B]. sum_j x_j l_j is computed as a . (x @ wt^T) + x . b, so the
    only passes over the [k*B, D] logits are the softplus sum (forward) and
    g * (x - sigmoid(l)) (backward, in place). With oneDNN the logits stay per member (a
    list), so nothing of that size is stacked or copied.
    """

    @staticmethod
    def forward(ctx, a: Tensor, wt: Tensor, b: Tensor, x: Tensor, k: int, gemm: str,
                keep: bool) -> Tensor:
        M, R, H = a.shape
        B = x.shape[1]
        a = a.contiguous()
        if _dnn(gemm, R, H, wt.shape[2]):
            logits: list[Tensor] | Tensor = []
            sps = []
            for j in range(M):  # one member's logits at a time (bounded memory when eval)
                lj = _onednn(a[j], wt[j].t(), b[j], "none")
                sps.append(_softplus_sum(lj))
                if keep:
                    logits.append(lj)
            sp = torch.stack(sps).view(M, k, B)
        else:
            logits = torch.bmm(a, wt)
            logits.add_(b.unsqueeze(1))
            sp = _softplus_sum(logits).view(M, k, B)
        xw = torch.bmm(x, wt.transpose(1, 2))  # [M, B, hid]
        xl = (a.view(M, k, B, H) * xw.unsqueeze(1)).sum(-1)
        xl = xl + torch.bmm(x, b.unsqueeze(2)).view(M, 1, B)
        ctx.k, ctx.gemm, ctx.logits = k, gemm, (logits if keep else None)
        ctx.save_for_backward(a, wt, x)
        return xl - sp

    @staticmethod
    def backward(ctx, g: Tensor):
        a, wt, x = ctx.saved_tensors
        logits, ctx.logits = ctx.logits, None  # used once: overwritten with the gradient
        M, R, H = a.shape
        B, D = x.shape[1], x.shape[2]
        k = ctx.k
        ng = g.neg().unsqueeze(-1)  # [M, k, B, 1]
        ga = gw = None
        if isinstance(logits, list):  # oneDNN, per member
            gl = []
            for j in range(M):  # g * (x - sigmoid(l)), in place
                lj = logits[j].sigmoid_().view(k, B, D)
                gl.append(lj.sub_(x[j]).mul_(ng[j]).view(R, D))
            if ctx.needs_input_grad[0]:
                ga = torch.stack([_onednn(gl[j], wt[j], None, "none") for j in range(M)])
            if ctx.needs_input_grad[1]:
                gw = torch.stack([_onednn(a[j].t(), gl[j].t(), None, "none")
                                  for j in range(M)])
            gb = torch.stack([t.sum(0) for t in gl]) if ctx.needs_input_grad[2] else None
        else:
            gls = logits.sigmoid_().view(M, k, B, D).sub_(x.unsqueeze(1)).mul_(ng)
            gls = gls.view(M, R, D)
            if ctx.needs_input_grad[0]:
                ga = torch.bmm(gls, wt.transpose(1, 2))
            if ctx.needs_input_grad[1]:
                gw = torch.bmm(a.transpose(1, 2), gls)
            gb = gls.sum(1) if ctx.needs_input_grad[2] else None
        return ga, gw, gb, None, None, None, None


# ------------------------------------------------------------------- the stacked model math
def _hidden(p: dict[str, Tensor], prefix: str, n_hidden: int, inp: Tensor,
            gemm: str) -> Tensor:
    for j in range(n_hidden):
        name = f"{prefix}.body.{2 * j}"
        inp = _Linear.apply(inp, p[name + ".wt"], p[name + ".b"], True, gemm)
    return inp


def _gaussian(p: dict[str, Tensor], prefix: str, n_hidden: int, inp: Tensor,
              gemm: str) -> tuple[Tensor, Tensor]:
    """A GaussianMLP of M members: inp [M, R, in] -> (mean, log_std), each [M, R, d]."""
    a = _hidden(p, prefix, n_hidden, inp, gemm)
    out = _Linear.apply(a, p[prefix + ".wt"], p[prefix + ".b"], False, gemm)
    mean, log_std = out.chunk(2, dim=-1)
    return mean, log_std


def _gaussian_log_prob(h: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    z = (h - mean) * torch.exp(-log_std)
    d = h.shape[-1]
    return -0.5 * z.square().sum(-1) - log_std.sum(-1) - 0.5 * d * _LOG_2PI


def _encode0(p: dict[str, Tensor], spec: _Spec, x: Tensor,
             gemm: str = "bmm") -> tuple[Tensor, Tensor]:
    """q(h_1 | x) of stacked members: x [M, B, x_dim] -> (mean, log_std) [M, B, d_1]."""
    return _gaussian(p, "encoder.0", spec.n_hidden[0], x, gemm)


def fleet_log_weights(p: dict[str, Tensor], spec: _Spec, x: Tensor, eps: Sequence[Tensor],
                      q0: tuple[Tensor, Tensor] | None = None, gemm: str = "bmm") -> Tensor:
    """log w = log p(x, h) - log q(h | x) of M stacked members with the same architecture.

    The same quantity as :meth:`IWAE.log_weights` (member by member), written with batched
    matmuls over the member dimension, fused layers and less element-wise work:

    - log q(h_l | h_{l-1}) uses z = eps directly (h = mean + std * eps, so
      (h - mean) / std = eps: same value, same total gradient);
    - the Bernoulli log-likelihood goes through :class:`_BernoulliOut`.

    Args:
        p: stacked parameters in the layout of :func:`stack_state_dicts`.
        x: [M, B, x_dim], one batch per member.
        eps: per stochastic layer, [M, k, B, d_l] standard-normal noise.
        q0: (mean, log_std) of q(h_1 | x) if already computed (see :func:`_encode0`).
        gemm: "bmm" (any device and dtype) or "onednn" (float32 on the CPU, see
            :func:`onednn_available`).

    Returns:
        log_w: [M, k, B]
    """
    M, B = x.shape[0], x.shape[1]
    k = eps[0].shape[1]
    L = len(spec.layers)
    hs: list[Tensor] = []
    log_q = None
    for level in range(L):
        if level == 0:
            mean, log_std = q0 if q0 is not None else _encode0(p, spec, x, gemm)
            mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)  # [M, 1, B, d]
        else:
            inp = hs[-1].view(M, k * B, -1)
            mean, log_std = _gaussian(p, f"encoder.{level}", spec.n_hidden[level], inp, gemm)
            mean, log_std = mean.view(M, k, B, -1), log_std.view(M, k, B, -1)
        e = eps[level]
        h = torch.addcmul(mean, torch.exp(log_std), e)  # [M, k, B, d]
        d = e.shape[-1]
        lq = -0.5 * e.square().sum(-1) - log_std.sum(-1) - 0.5 * d * _LOG_2PI
        log_q = lq if log_q is None else log_q + lq
        hs.append(h)

    top = hs[-1]
    log_p = -0.5 * top.square().sum(-1) - 0.5 * top.shape[-1] * _LOG_2PI  # [M, k, B]
    for i in range(L - 1):  # p(h_{l-1} | h_l), top-down
        level = L - 1 - i
        mean, log_std = _gaussian(p, f"decoder.{i}", spec.n_hidden[level],
                                  hs[level].view(M, k * B, -1), gemm)
        below = hs[level - 1]
        log_p = log_p + _gaussian_log_prob(below, mean.view(below.shape),
                                           log_std.view(below.shape))

    prefix = f"decoder.{L - 1}"
    h1 = hs[0].view(M, k * B, -1)
    if spec.likelihood == "bernoulli":
        a = _hidden(p, prefix, spec.n_hidden[0], h1, gemm)  # [M, kB, hid]
        log_px = _BernoulliOut.apply(a, p[prefix + ".logits.wt"], p[prefix + ".logits.b"], x, k,
                                     gemm, torch.is_grad_enabled())
    else:
        mean, log_std = _gaussian(p, prefix, spec.n_hidden[0], h1, gemm)
        log_px = _gaussian_log_prob(x.unsqueeze(1), mean.view(M, k, B, -1),
                                    log_std.view(M, k, B, -1))
    return log_p + log_px - log_q


# ------------------------------------------------------------------------------- the groups
class _Group:
    """Members with the same architecture and k: stacked parameters and per-member objectives."""

    def __init__(self, spec: _Spec, k: int, idx: list[int], objectives: list[str],
                 params: dict[str, Tensor], gemm: str = "bmm"):
        self.spec, self.k, self.idx, self.gemm = spec, k, idx, gemm
        self.params = params
        self.objective_names = sorted(set(objectives))
        self.fns = [LOG_W_OBJECTIVES[o] for o in self.objective_names]
        self.obj_index = torch.tensor([self.objective_names.index(o) for o in objectives],
                                      device=next(iter(params.values())).device)

    @property
    def size(self) -> int:
        return len(self.idx)

    def bound(self, p: dict[str, Tensor], x: Tensor, eps: Sequence[Tensor]) -> Tensor:
        """Each member's objective per data point: [M, B]."""
        lw = fleet_log_weights(p, self.spec, x, eps, gemm=self.gemm).transpose(0, 1)
        if len(self.fns) == 1:
            return self.fns[0](lw)
        bounds = torch.stack([fn(lw) for fn in self.fns])  # [n_obj, M, B]
        sel = self.obj_index.view(1, -1, 1).expand(1, bounds.shape[1], bounds.shape[2])
        return bounds.gather(0, sel).squeeze(0)


def _group_loss(groups: Sequence[_Group], xs: Sequence[Tensor],
                eps: Sequence[Sequence[Tensor]]) -> tuple[Tensor, Tensor]:
    """Sum over members of the negative batch-mean objective, and the bounds [M_total]."""
    loss = None
    bounds = []
    for g, x, e in zip(groups, xs, eps):
        b = g.bound(g.params, x, e).mean(1)  # [M]
        loss = -b.sum() if loss is None else loss - b.sum()
        bounds.append(b.detach())
    return loss, torch.cat(bounds)


# ------------------------------------------------------------------------------- the fleet
@dataclass
class _Position:
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


@dataclass
class FitResult:
    """What :meth:`Fleet.fit` did: per-member histories, and whether the schedule is done."""

    history: list[list[dict]]  # per member (in member order), per epoch
    finished: bool  # False: stopped early (time limit or signal), checkpointed; call again
    epochs_done: int
    seconds: float  # training wall time of this call


class Fleet:
    """Many IWAE/VAE models trained together (see the module docstring).

    Args:
        models: the initialised members (e.g. from
            :func:`iwae_tutorial.experiments.build_model`, which seeds the initialisation);
            all on one device. Their weights are copied into the fleet's stacked tensors.
        members: one :class:`FleetMember` per model (objective, k, seed, name).
        gemm: matrix products by "bmm" (torch.bmm; any device), "onednn" (float32 on the
            CPU; ~2x faster where MKL is slow, see :func:`onednn_available`) or "auto"
            (oneDNN when usable; ``$IWAE_FLEET_GEMM`` overrides).
    """

    def __init__(self, models: Sequence[IWAE], members: Sequence[FleetMember],
                 gemm: str = "auto"):
        if len(models) != len(members) or not models:
            raise ValueError("give one FleetMember per model, and at least one model")
        self.members = list(members)
        names = [m.name or f"member{i}" for i, m in enumerate(self.members)]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique, got {names}")
        self.names = names
        self.device = models[0].device
        self.dtype = next(models[0].parameters()).dtype
        if any(m.device != self.device for m in models):
            raise ValueError("all models of a fleet must be on the same device")
        self.specs = [_Spec.of(m) for m in models]
        self.gemm = _resolve_gemm(gemm, self.device, self.dtype)
        keys: dict[tuple, list[int]] = {}
        for i, (spec, mem) in enumerate(zip(self.specs, self.members)):
            keys.setdefault((spec, int(mem.k)), []).append(i)
        self.groups: list[_Group] = []
        for (spec, k), idx in keys.items():
            params = stack_state_dicts([models[i].state_dict() for i in idx], spec)
            params = {n: t.to(self.device).requires_grad_(True) for n, t in params.items()}
            self.groups.append(_Group(spec, k, idx, [self.members[i].objective for i in idx],
                                      params, self.gemm))
        # member order <-> the fleet's internal order (groups contiguous)
        self.order = [i for g in self.groups for i in g.idx]
        self.position = {i: pos for pos, i in enumerate(self.order)}

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_configs(cls, cfgs: Sequence, ds, device: torch.device | str = "cpu",
                     gemm: str = "auto") -> Fleet:
        """A fleet of :class:`~iwae_tutorial.experiments.RunConfig` on data set ``ds``, each
        member initialised exactly as :func:`~iwae_tutorial.experiments.build_model` does."""
        from .experiments import build_model

        models = [build_model(c, ds, device) for c in cfgs]
        members = [FleetMember(c.objective, c.k, c.seed, c.name) for c in cfgs]
        return cls(models, members, gemm=gemm)

    # ----------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.members)

    def parameters(self) -> list[Tensor]:
        return [t for g in self.groups for t in g.params.values()]

    def _locate(self, i: int) -> tuple[_Group, int]:
        for g in self.groups:
            if i in g.idx:
                return g, g.idx.index(i)
        raise IndexError(i)

    def state_dict_of(self, i: int) -> dict[str, Tensor]:
        """Member i's weights as a normal ``IWAE`` state dict (copies)."""
        g, j = self._locate(i)
        return unstack_state_dict(g.params, j, g.spec)

    def model(self, i: int | str, device: torch.device | str | None = None) -> IWAE:
        """Member ``i`` (index or name) as a plain :class:`IWAE` in eval mode."""
        if isinstance(i, str):
            i = self.names.index(i)
        m = self.specs[i].build().to(device or self.device)
        m.load_state_dict(self.state_dict_of(i))
        return m.eval()

    def models(self, device: torch.device | str | None = None) -> list[IWAE]:
        return [self.model(i, device) for i in range(len(self))]

    def fingerprint(self, n: int, batch_size: int, binarize: bool, data: str) -> dict:
        """What must not change between a fleet checkpoint and its resumption, as a flat
        dict (``members``, ``binarize``, ``data``, then ``<member>.<key>``)."""
        out: dict = {"members": list(self.names), "binarize": bool(binarize), "data": data}
        for nm, m, sp in zip(self.names, self.members, self.specs):
            member = {**fingerprint(m.objective, m.k, batch_size, m.seed, n),
                      "layers": [list(s) for s in sp.layers], "x_dim": sp.x_dim,
                      "likelihood": sp.likelihood}
            out.update({f"{nm}.{key}": v for key, v in member.items()})
        return out

    def _nonfinite_members(self) -> list[str]:
        """Names of the members with a NaN or inf parameter (one host sync)."""
        flags = torch.ones(len(self), dtype=torch.bool, device=self.device)  # internal order
        start = 0
        for g in self.groups:
            ok = torch.stack([torch.isfinite(t.detach().flatten(1).sum(1))
                              for t in g.params.values()]).all(0)
            flags[start:start + g.size] &= ok
            start += g.size
        return [self.names[self.order[pos]] for pos in
                (~flags).nonzero().flatten().tolist()]

    # ----------------------------------------------------------------------- training
    def fit(
        self,
        x_train: Tensor,
        *,
        schedule: Sequence[Stage] | None = None,
        epochs: int | None = None,
        batch_size: int = 20,
        binarize: bool = True,
        run_dir: str | Path | None = None,
        resume: bool = True,
        max_seconds: float | None = None,
        handle_signals: bool = True,
        cuda_graph: bool | None = None,
        progress: bool = True,
        callback: Callable[[int, list[dict]], None] | None = None,
        _stop_after_steps: int | None = None,
    ) -> FitResult:
        """Train every member on ``x_train`` with the schedule (default: the paper's).

        Each member sees exactly what :func:`iwae_tutorial.train.fit` with its seed would:
        its own shuffled order per epoch, its own binarization and noise.

        Args:
            x_train: [n, x_dim] grey values (binarized per batch when ``binarize``).
            schedule, epochs: as in :func:`~iwae_tutorial.train.fit`.
            run_dir: where ``fleet.pt`` (everything: stacked weights, Adam, generators,
                position in the epoch) is written atomically after every epoch and when
                stopping early; an existing one is resumed when ``resume``.
            max_seconds: stop cleanly (checkpointed, mid-epoch if need be) at the end of the
                first step after this many seconds; call again to continue.
            handle_signals: SIGTERM/SIGINT stop at the end of the current step, checkpointed
                (only in the main thread).
            cuda_graph: capture the step in a CUDA graph (default: on for CUDA).

        Returns:
            :class:`FitResult`. ``finished`` is False when it stopped early.

        Raises:
            TrainingDivergedError: a member's bound became NaN/inf (named in the message);
                the last good checkpoint is kept.
        """
        schedule = resolve_schedule(schedule, epochs)
        total_epochs = schedule_epochs(schedule)
        device = self.device
        x_dim = self.specs[0].x_dim
        if any(s.x_dim != x_dim for s in self.specs):
            raise ValueError("all members must model data of the same size")
        if x_train.dim() != 2 or x_train.shape[1] != x_dim:
            raise ValueError(f"x_train must be [n, {x_dim}], got {tuple(x_train.shape)}")
        x_train = x_train.to(device=device, dtype=self.dtype)
        n = x_train.shape[0]
        if n < batch_size:
            raise ValueError(f"need at least batch_size={batch_size} examples, got {n}")
        steps_per_epoch = n // batch_size
        on_cuda = device.type == "cuda"
        use_graph = on_cuda if cuda_graph is None else bool(cuda_graph)
        if use_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the fleet on a CUDA device")

        gens = [make_generators(m.seed, device) for m in self.members]
        opt = self._make_optimizer(schedule[0].lr, graph=use_graph)
        ckpt_path = Path(run_dir) / FLEET_CHECKPOINT if run_dir is not None else None
        fprint = self.fingerprint(n, batch_size, binarize, data_digest(x_train))
        pos = _Position([[] for _ in range(len(self))])
        t_start = time.perf_counter()
        deadline = None if max_seconds is None else t_start + float(max_seconds)
        steps_run = 0

        def stopping() -> bool:
            timed_out = deadline is not None and time.perf_counter() > deadline
            halt = _stop_after_steps is not None and steps_run >= _stop_after_steps
            return stop.requested or timed_out or halt

        def result(finished: bool, epochs_done: int) -> FitResult:
            return FitResult([list(h) for h in pos.history], finished, epochs_done,
                             time.perf_counter() - t_start)

        with contextlib.ExitStack() as stack:
            if run_dir is not None:  # one process at a time in a run directory
                stack.enter_context(RunDirLock(run_dir, "--run-root"))
            if ckpt_path is not None and resume and ckpt_path.exists():
                pos = self._resume(ckpt_path, opt, gens, fprint, schedule)
            elif ckpt_path is not None and ckpt_path.with_name(LOG_NAME).exists():
                ckpt_path.with_name(LOG_NAME).unlink()  # a fresh start: the old log goes
            stepper = _Stepper(self, opt, batch_size, x_dim, use_graph=use_graph)
            stop = stack.enter_context(StopFlag(handle_signals))
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = stack.enter_context(tqdm(total=total_epochs, initial=pos.epoch,
                                               unit="epoch", desc=f"fleet of {len(self)}",
                                               leave=False))
            for epoch in range(pos.epoch, total_epochs):
                lr = lr_at(schedule, epoch)
                _set_lr(opt, lr)
                t0 = time.perf_counter()
                if pos.step == 0:
                    pos.new_epoch(epoch, [torch.randperm(n, generator=gens[i]["order"])
                                          for i in self.order], device)
                for step in range(pos.step, steps_per_epoch):
                    idx = pos.orders[:, step * batch_size:(step + 1) * batch_size]
                    pos.add(step, stepper.step(x_train, idx, gens, binarize))
                    steps_run += 1
                    if stopping() and step + 1 < steps_per_epoch:  # stop mid-epoch, saved
                        self._check_finite(pos, epoch, steps_per_epoch, ckpt_path)
                        pos.step = step + 1
                        pos.epoch_seconds += time.perf_counter() - t0
                        self._save(ckpt_path, opt, gens, fprint, pos)
                        return result(False, epoch)
                self._check_finite(pos, epoch, steps_per_epoch, ckpt_path)
                means = (pos.bound_sum / steps_per_epoch).cpu().tolist()  # one sync per epoch
                seconds = pos.epoch_seconds + time.perf_counter() - t0
                for p_, i in enumerate(self.order):
                    pos.history[i].append({"epoch": epoch + 1, "lr": lr,
                                           "train_bound": means[p_], "seconds": seconds,
                                           "steps": steps_per_epoch})
                pos.end_epoch(epoch + 1)
                self._save(ckpt_path, opt, gens, fprint, pos)
                if ckpt_path is not None:  # after the checkpoint (see _resume)
                    with open(ckpt_path.with_name(LOG_NAME), "a") as f:
                        f.write(json.dumps(self._log_entries(pos.history)[-1]) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(sec=f"{seconds:.1f}")
                if callback is not None:
                    callback(epoch + 1, [h[-1] for h in pos.history])
                if stopping() and epoch + 1 < total_epochs:
                    return result(False, epoch + 1)
        return result(True, total_epochs)

    def _resume(self, ckpt_path: Path, opt: torch.optim.Optimizer, gens: list[dict],
                fprint: dict, schedule: Sequence[Stage]) -> _Position:
        """Load a fleet checkpoint into the fleet, ``opt`` and ``gens`` after checking that
        it is this fleet's; repair ``log.jsonl`` from its history. -> where it stopped."""
        state = load_checkpoint(ckpt_path, map_location=self.device)
        check_state(state, ("params", "optimizer", "rng", "epoch", "step", "history"),
                    ckpt_path)
        saved = state.get("fingerprint")
        if isinstance(saved, dict) and "members" in saved and isinstance(saved["members"],
                                                                          list) \
                and saved["members"] and isinstance(saved["members"][0], dict):
            saved = {"members": [m.get("name") for m in saved["members"]],
                     "binarize": saved.get("binarize")}  # the layout of older versions
        check_resumable(saved, fprint, state["history"][0], schedule, str(ckpt_path.parent),
                        place="another --run-root", other="another fleet or data set")
        self._load_params(state["params"])
        lrs = [group["lr"] for group in opt.param_groups]
        opt.load_state_dict(state["optimizer"])
        for group, lr0 in zip(opt.param_groups, lrs):  # keep this optimizer's lr type
            group["lr"] = lr0  # (a float, or a device tensor for CUDA graphs); set later
        for g, s in zip(gens, state["rng"]):
            for name in g:
                g[name].set_state(s[name].cpu())  # CPU ByteTensors, even for CUDA
        pos = _Position([list(h) for h in state["history"]], int(state["epoch"]),
                        int(state["step"]))
        if pos.step > 0:
            pos.orders = state["orders"].to(self.device)
            pos.bound_sum = state["bound_sum"].to(self.device)
            pos.first_bad = state["first_bad"].to(self.device)
            pos.epoch_seconds = float(state["epoch_seconds"])
        sync_log(ckpt_path.with_name(LOG_NAME), self._log_entries(pos.history))
        return pos

    def _save(self, ckpt_path: Path | None, opt: torch.optim.Optimizer, gens: list[dict],
              fprint: dict, pos: _Position) -> None:
        """Write the fleet checkpoint (everything to resume at ``pos``), unless a member's
        parameters are NaN or infinite (then the last good checkpoint stays)."""
        bad = self._nonfinite_members()
        if bad:
            where = (f"the last good checkpoint is kept at {ckpt_path}" if ckpt_path is not
                     None and ckpt_path.exists() else "no checkpoint was written")
            raise TrainingDivergedError(
                f"member(s) {', '.join(map(repr, bad))}: a parameter became NaN or infinite "
                f"by epoch {pos.epoch + (1 if pos.step else 0)} (a non-finite gradient with "
                f"a finite bound); {where}. Try a lower learning rate.")
        if ckpt_path is None:
            return
        state = {
            "params": {self._group_name(g): {n_: t.detach() for n_, t in g.params.items()}
                       for g in self.groups},
            "optimizer": opt.state_dict(),
            "rng": [{name: gg.get_state() for name, gg in g.items()} for g in gens],
            "epoch": pos.epoch, "step": pos.step, "history": pos.history,
            "fingerprint": fprint, "members": [asdict(m) for m in self.members],
            "names": self.names,
        }
        if pos.step > 0:
            state.update(orders=pos.orders.cpu(), bound_sum=pos.bound_sum.cpu(),
                         first_bad=pos.first_bad.cpu(), epoch_seconds=pos.epoch_seconds)
        save_tensors(ckpt_path, state)

    def _log_entries(self, history: Sequence[Sequence[dict]]) -> list[dict]:
        """The lines of the fleet's ``log.jsonl``, one per epoch, from the members' histories."""
        return [{"epoch": first["epoch"], "lr": first["lr"], "seconds": first["seconds"],
                 "train_bound": {self.names[i]: history[i][e]["train_bound"]
                                 for i in range(len(self))}}
                for e, first in enumerate(history[0])]

    def _check_finite(self, pos: _Position, epoch: int, steps_per_epoch: int,
                      ckpt_path: Path | None) -> None:
        bad = pos.first_bad.cpu().tolist()
        for pos, s in enumerate(bad):
            if s >= 0:
                _diverged(self.names[self.order[pos]], epoch, s, steps_per_epoch, ckpt_path)

    def _make_optimizer(self, lr: float, graph: bool) -> torch.optim.Adam:
        """One Adam over all stacked parameters (betas and eps of train.make_optimizer)."""
        params = self.parameters()
        kw: dict = {"betas": (0.9, 0.999), "eps": 1e-4}
        if graph:  # capturable in a CUDA graph; lr a device tensor so it can change
            return torch.optim.Adam(params, lr=torch.tensor(lr, device=self.device),
                                    capturable=True, foreach=True, **kw)
        try:
            return torch.optim.Adam(params, lr=lr, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # pragma: no cover - old torch/device
            return torch.optim.Adam(params, lr=lr, foreach=True, **kw)

    def _group_name(self, g: _Group) -> str:
        return "+".join(self.names[i] for i in g.idx)

    def _load_params(self, stacked: dict[str, dict[str, Tensor]]) -> None:
        for g in self.groups:
            src = stacked[self._group_name(g)]
            with torch.no_grad():
                for n_, t in g.params.items():
                    t.copy_(src[n_])

    # ----------------------------------------------------------------------- saving
    def save_members(self, directory: str | Path, configs: Sequence | None = None,
                     histories: Sequence[Sequence[dict]] | None = None) -> list[Path]:
        """One run directory per member (``<directory>/<name>/``) with ``checkpoint.pt``
        (model weights, model config, history) and, when ``configs`` (RunConfig per member)
        are given, ``config.json``, so :func:`iwae_tutorial.experiments.load_run` reads it.
        Also writes ``<directory>/fleet.json`` (the members and their files)."""
        directory = Path(directory)
        out = []
        for i, name in enumerate(self.names):
            d = directory / name
            d.mkdir(parents=True, exist_ok=True)
            m = self.model(i, device="cpu")
            save_tensors(d / CHECKPOINT_NAME, {
                "model": m.state_dict(), "model_config": m.config,
                "history": list(histories[i]) if histories is not None else [],
                "epoch": len(histories[i]) if histories is not None else None,
                "trained_by": "iwae_tutorial.fleet",
            })
            if configs is not None:
                write_json_atomic(d / "config.json", asdict(configs[i]))
            out.append(d)
        meta = {"members": [{"name": nm, **asdict(m), "layers": [list(s) for s in sp.layers],
                             "dir": nm} for nm, m, sp in zip(self.names, self.members,
                                                               self.specs)]}
        write_json_atomic(directory / "fleet.json", meta)
        return out


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def _diverged(name: str, epoch: int, step: int, steps_per_epoch: int,
              ckpt_path: Path | None) -> None:
    where = (f"the last good checkpoint is kept at {ckpt_path}" if ckpt_path is not None
             and ckpt_path.exists() else "no checkpoint was written")
    raise TrainingDivergedError(
        f"member {name!r}: the bound became NaN or infinite at epoch {epoch + 1}, step "
        f"{step + 1} of {steps_per_epoch}; {where}. Try a lower learning rate.")


class StopFlag:
    """SIGTERM/SIGINT set a flag (checked at the end of each step) instead of killing."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopFlag:
        if self.enabled:
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ------------------------------------------------------------------------------- stepping
class _Stepper:
    """Draws each member's batch and noise and runs one optimisation step of the fleet."""

    def __init__(self, fleet: Fleet, opt: torch.optim.Optimizer, batch_size: int, x_dim: int,
                 use_graph: bool):
        self.fleet, self.opt, self.B = fleet, opt, batch_size
        dev = fleet.device
        dt = fleet.dtype
        M = len(fleet)
        self.x_buf = torch.empty(M, batch_size, x_dim, device=dev, dtype=dt)
        # per group per layer [M_g, k, B, d_l]
        self.eps_buf = [[torch.empty(g.size, g.k, batch_size, d, device=dev, dtype=dt)
                         for d in g.spec.latent_dims] for g in fleet.groups]
        self.loss_fn = _group_loss
        self.graph = None
        if use_graph:
            self.graph = _CudaGraphStep(self)

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
        out, start = [], 0
        for g in self.fleet.groups:
            out.append(self.x_buf[start:start + g.size])
            start += g.size
        return out

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


class _CudaGraphStep:
    """The fleet's step (loss, backward, Adam) captured once in a CUDA graph.

    Warm-up runs real steps on a side stream (as the PyTorch documentation prescribes), so
    the parameters and Adam state are snapshotted before and restored after it: the capture
    itself changes nothing, and the first replay is the first real step. Random draws are
    made outside the graph into its static buffers (see :meth:`_Stepper.draw`).
    Unmeasured in this repository (no GPU was available); written to be correct by
    construction.
    """

    def __init__(self, stepper: _Stepper):
        self.stepper = stepper
        opt = stepper.opt
        params = stepper.fleet.parameters()
        # fill the static buffers with harmless values for the warm-up
        stepper.x_buf.zero_()
        for bufs in stepper.eps_buf:
            for b in bufs:
                b.zero_()
        snap_p = [p.detach().clone() for p in params]
        had_state = {p: {k: (v.clone() if isinstance(v, Tensor) else v)
                         for k, v in opt.state[p].items()} for p in params if p in opt.state}
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                stepper.eager_step()
        torch.cuda.current_stream().wait_stream(s)
        with torch.no_grad():
            for p, v in zip(params, snap_p):
                p.copy_(v)
            for p in params:
                st = opt.state[p]
                old = had_state.get(p)
                for k, v in st.items():
                    if isinstance(v, Tensor):
                        if old is not None and k in old:
                            v.copy_(old[k])
                        else:
                            v.zero_()
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


# ---------------------------------------------------------------------------- evaluation
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
    the same order as :func:`~iwae_tutorial.evaluate.log_likelihood` does, so with the same
    ``batch_size`` and ``chunk_size`` the result equals calling it model by model (up to float
    rounding). ``start``/``stop`` evaluate only examples [start:stop] (the returned tensor
    still has n columns; the others are NaN): used to stream a long evaluation in pieces.
    """
    from .evaluate import LogMeanExpAccumulator

    if k < 1:
        raise ValueError(f"k must be a positive number of samples, got {k}")
    models = list(models)
    if not models:
        raise ValueError("no models to evaluate")
    device = models[0].device
    dtype = next(models[0].parameters()).dtype
    gemm = _resolve_gemm(gemm, device, dtype)
    n = x.shape[0]
    stop = n if stop is None else min(stop, n)
    batch_size = max(1, min(batch_size, n))
    if generators is None:
        generators = [None] * len(models)
    if len(generators) != len(models):
        raise ValueError("give one generator per model (or none)")
    out = torch.full((len(models), n), float("nan"), dtype=torch.float64)
    groups: dict[_Spec, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(_Spec.of(m), []).append(i)
    if chunk_size is None:  # max_rows rows of samples per group at a time
        biggest = max(len(idx) for idx in groups.values())
        chunk_size = max(1, min(k, max_rows // (batch_size * biggest)))
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
                q0 = _encode0(p, spec, xs, gemm)
                accs = [LogMeanExpAccumulator() for _ in idx]
                done = 0
                while done < k:
                    c = min(chunk_size, k - done)
                    eps = [torch.empty(Mg, c, nb, d, device=device, dtype=xs.dtype)
                           for d in spec.latent_dims]
                    for j, i in enumerate(idx):
                        for e in eps:  # layer order, as IWAE.sample_q draws them
                            torch.randn(e.shape[1:], generator=generators[i], out=e[j])
                    lw = fleet_log_weights(p, spec, xs, eps, q0=q0, gemm=gemm)  # [Mg, c, nb]
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
