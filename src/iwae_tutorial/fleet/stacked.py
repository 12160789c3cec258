"""The fused stacked forward/backward pass of many IWAE/VAE models, used by training AND
evaluation.

M models with the same architecture (a :class:`StackedSpec`) are *stacked*: each linear map
``prefix`` of :class:`~iwae_tutorial.models.IWAE` becomes one tensor over the M members,
``prefix.wt: [M, in, out]`` (the weight transposed, so ``x @ wt`` needs no copy and its
gradient comes out contiguous) and ``prefix.b: [M, out]``; a Gaussian's ``mean`` and
``log_std`` maps are fused into one (``[M, in, 2d]``). See :func:`stack_state_dicts` and
:func:`unstack_state_dict`.

Why: one model's step is a few hundred small kernels and a Python loop around them; M models
stacked are a handful of batched matmuls over all members at once, with fused element-wise
work in two custom autograd functions (:class:`_Linear`: bias and tanh fused into the
product, no broadcast copies; :class:`_BernoulliOut`: the Bernoulli log-likelihood with one
log per ~100 pixels and its gradient in place). On the CPU the large products go to oneDNN
(:func:`onednn_available`: ~2x MKL's speed on the AMD CPU of this project; chosen by
:func:`resolve_gemm`, ``$IWAE_FLEET_GEMM=bmm`` turns it off). :func:`stacked_log_weights` is
the same quantity as :meth:`IWAE.log_weights <iwae_tutorial.models.IWAE.log_weights>` member
by member, up to float rounding (``tests/test_fleet.py`` checks values and gradients).

Used by the fleet trainer (:mod:`iwae_tutorial.fleet`, forward and backward) and by the
batched L_5000 evaluation (:func:`iwae_tutorial.evaluate.log_likelihood_many`, forward only).
This module imports only :mod:`iwae_tutorial.models` (and torch).

Public API
----------
- :class:`StackedSpec`: the architecture of a stack (``StackedSpec.of(model)``).
- :func:`stack_state_dicts` / :func:`unstack_state_dict`: between ``IWAE`` state dicts and
  the stacked layout.
- :func:`stacked_log_weights`: log-weights of stacked members, ``[M, k, batch]``;
  :func:`encode_first_layer`: q(h_1 | x) of stacked members (computed once, reused over
  chunks of samples).
- :func:`resolve_gemm`, :func:`onednn_available`: which matrix-product kernel to use.
- :func:`tune_malloc`: glibc tuning for CPU processes (training or evaluation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from .spec import StackedSpec, stack_state_dicts, unstack_state_dict

__all__ = [
    "StackedSpec", "stack_state_dicts", "unstack_state_dict", "stacked_log_weights",
    "encode_first_layer", "resolve_gemm", "onednn_available", "onednn_faster", "tune_malloc",
]

_LOG_2PI = math.log(2 * math.pi)


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
    2-core machine of this project), it is ~2x faster for the stacked models' large GEMMs.
    Exact fp32 arithmetic; only the summation order differs. Set ``IWAE_FLEET_GEMM=bmm`` to
    disable.
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
    it was applied. Called by the command line (``python -m iwae_tutorial reproduce``) and by
    the benchmarks (for both loops they compare); the library never calls it by itself.
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


def resolve_gemm(gemm: str, device: torch.device, dtype: torch.dtype) -> str:
    """The matrix-product kernel to use: "bmm" (torch.bmm; any device and dtype) or "onednn"
    (float32 on the CPU, see :func:`onednn_available`). "auto" is "onednn" where it is usable
    and faster on this CPU (:func:`onednn_faster`), else "bmm"; ``$IWAE_FLEET_GEMM``
    overrides "auto"."""
    if gemm == "auto" and "IWAE_FLEET_GEMM" in os.environ:
        gemm = os.environ["IWAE_FLEET_GEMM"]
        if gemm not in ("auto", "onednn", "bmm"):
            raise ValueError(f"IWAE_FLEET_GEMM={gemm!r} is not a matrix-product kernel; set "
                             "it to auto, onednn or bmm, or unset it")
    if gemm not in ("auto", "onednn", "bmm"):
        raise ValueError(f"gemm must be 'auto', 'onednn' or 'bmm', got {gemm!r}")
    usable = device.type == "cpu" and dtype == torch.float32 and onednn_available()
    if gemm == "onednn" and not usable:
        raise ValueError("gemm='onednn' needs float32 on the CPU and a PyTorch built with "
                         "oneDNN (torch.backends.mkldnn.is_available())")
    if gemm == "auto":
        return "onednn" if usable and onednn_faster() else "bmm"
    return gemm


_onednn_faster: bool | None = None


def onednn_faster(reps: int = 5) -> bool:
    """Whether oneDNN's matmul beats ``torch.bmm`` on this CPU for the fleet's large products
    (a k = 50 member's decoder: [1000, 200] x [200, 784], forward and both backward products),
    timed once per process (~0.1 s). The gain is the CPU's: ~2x on one AMD EPYC of this
    project, slower than bmm on another and on an Intel Xeon (see benchmarks/README.md)."""
    global _onednn_faster
    if _onednn_faster is None:
        import time

        g = torch.Generator().manual_seed(0)
        a = torch.randn(2, 1000, 200, generator=g)
        wt = torch.randn(2, 200, 784, generator=g)
        b = torch.randn(2, 784, generator=g)
        gy = torch.randn(2, 1000, 784, generator=g)

        def run(gemm: str) -> float:
            best = float("inf")
            for _ in range(reps + 1):  # the first is a warm-up
                t0 = time.perf_counter()
                _mm_bias_act(a, wt, b, False, gemm)
                _mm_nt(gy, wt, gemm)
                _mm_tn(a, gy, gemm)
                best = min(best, time.perf_counter() - t0)
            return best

        _onednn_faster = run("onednn") < 0.9 * run("bmm")
    return _onednn_faster


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


def encode_first_layer(p: dict[str, Tensor], spec: StackedSpec, x: Tensor,
                       gemm: str = "bmm") -> tuple[Tensor, Tensor]:
    """q(h_1 | x) of stacked members: x [M, B, x_dim] -> (mean, log_std) [M, B, d_1]."""
    return _gaussian(p, "encoder.0", spec.n_hidden[0], x, gemm)


def stacked_log_weights(p: dict[str, Tensor], spec: StackedSpec, x: Tensor,
                        eps: Sequence[Tensor], q0: tuple[Tensor, Tensor] | None = None,
                        gemm: str = "bmm") -> Tensor:
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
        q0: (mean, log_std) of q(h_1 | x) if already computed (see
            :func:`encode_first_layer`).
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
            mean, log_std = q0 if q0 is not None else encode_first_layer(p, spec, x, gemm)
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


