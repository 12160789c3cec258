"""Reweighted wake-sleep (Bornschein & Bengio, 2015) next to the IWAE.

RWS trains the same two networks as the IWAE, from the same k samples h_i ~ q(h | x) and the
same self-normalised weights w~_i = w_i / sum_j w_j, w_i = p(x, h_i) / q(h_i | x):

- wake phase, decoder: ``sum_i w~_i grad_theta log p(x, h_i)``: the IWAE's decoder gradient,
  exactly (the samples do not depend on theta, so grad_theta log w_i = grad_theta log p(x, h_i));
- wake phase, encoder: ``sum_i w~_i grad_phi log q(h_i | x)`` with the samples held fixed: a
  self-normalised estimate of grad_phi E_{p(h | x)}[log q(h | x)], i.e. of minus the gradient
  of KL(p(h | x) || q(h | x)). The IWAE's encoder gradient instead follows L_k through the
  reparameterised samples.

The objective ``"rws"`` (:func:`iwae_tutorial.objectives.rws_objective`, with
:func:`~iwae_tutorial.objectives.log_q_at`) is a surrogate with exactly these two gradients;
:func:`wake_phase_gradients` computes all of them for one draw of
the samples, the weighted sums from per-sample gradients, so that a chapter can check the
identities number by number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .bounds import iwae_bound, normalized_weights
from .models import IWAE
from .objectives import log_q_at, rws_objective

__all__ = ["WakeGradients", "wake_phase_gradients", "relative_difference",
           "cosine"]


@dataclass
class WakeGradients:
    """Gradients of one draw of k samples per data point, summed over the batch, flattened
    over the decoder's (theta) or the encoder's (phi) parameters:

    - ``iwae_decoder``, ``iwae_encoder``: autograd's gradient of L_k (reparameterised);
    - ``wake_decoder``: sum_i w~_i grad_theta log p(x, h_i), from the k per-sample gradients;
    - ``wake_encoder``: sum_i w~_i grad_phi log q(h_i | x), samples fixed, from the k
      per-sample gradients;
    - ``rws_decoder``, ``rws_encoder``: autograd's gradient of the ``"rws"`` surrogate;
    - ``weights``: the normalised weights w~, [k, batch].
    """

    iwae_decoder: Tensor
    iwae_encoder: Tensor
    wake_decoder: Tensor
    wake_encoder: Tensor
    rws_decoder: Tensor
    rws_encoder: Tensor
    weights: Tensor


def wake_phase_gradients(model: IWAE, x: Tensor, k: int,
                         generator: torch.Generator | None = None) -> WakeGradients:
    """All the gradients of :class:`WakeGradients` for one draw of the noise (the same samples
    for all of them). The weighted sums are built from k * batch separate backward passes,
    not from a surrogate, so comparing them with autograd's gradient of L_k checks the algebra.

    x: [batch, x_dim] (use float64 to compare to rounding error)
    """
    theta = [p for n, p in model.named_parameters() if n.startswith("decoder")]
    phi = [p for n, p in model.named_parameters() if n.startswith("encoder")]
    eps = [torch.randn(k, x.shape[0], d, dtype=x.dtype, device=x.device, generator=generator)
           for d in model.latent_dims]

    def flat(scalar: Tensor, params: list[Tensor]) -> Tensor:
        grads = torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(grads, params)]).detach()

    lk = iwae_bound(model.log_weights(x, k, eps=eps)).sum()
    iwae_decoder, iwae_encoder = flat(lk, theta), flat(lk, phi)

    hs, _ = model.sample_q(x, k, eps=eps)
    hs = [h.detach() for h in hs]  # the samples, held fixed
    log_p = model.log_joint(x, hs)  # [k, batch], depends on theta only
    log_q = log_q_at(model, x, hs)  # [k, batch], depends on phi only
    w = normalized_weights((log_p - log_q).detach().double())  # [k, batch]
    wake_decoder = torch.zeros_like(iwae_decoder, dtype=torch.float64)
    wake_encoder = torch.zeros_like(iwae_encoder, dtype=torch.float64)
    for i in range(k):
        for b in range(x.shape[0]):
            wake_decoder += w[i, b] * flat(log_p[i, b], theta).double()
            wake_encoder += w[i, b] * flat(log_q[i, b], phi).double()

    surrogate = rws_objective(model, x, k, eps=eps)[0].sum()
    return WakeGradients(iwae_decoder=iwae_decoder, iwae_encoder=iwae_encoder,
                         wake_decoder=wake_decoder.to(iwae_decoder.dtype),
                         wake_encoder=wake_encoder.to(iwae_encoder.dtype),
                         rws_decoder=flat(surrogate, theta), rws_encoder=flat(surrogate, phi),
                         weights=w)


def relative_difference(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b||, in float64 (0 when both are zero)."""
    a, b = a.double(), b.double()
    norm = float(b.norm())
    diff = float((a - b).norm())
    return diff / norm if norm > 0 else diff


def cosine(a: Tensor, b: Tensor) -> float:
    """The cosine of the angle between two flattened gradients."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float(a @ b / (a.norm() * b.norm()))
