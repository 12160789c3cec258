"""The generative model and recognition network of Burda et al. (2015).

One class, :class:`IWAE`, serves both the VAE and the IWAE: the architecture and the
log-weights are the same, only the objective that is maximised differs (see
:mod:`iwae_tutorial.objectives`).

Notation: stochastic layers h_1 .. h_L, ``k`` samples per data point, ``log_w: [k, batch]``.

    q(h_1 .. h_L | x) = q(h_1 | x) q(h_2 | h_1) ... q(h_L | h_{L-1})
    p(x, h_1 .. h_L)  = p(h_L) p(h_{L-1} | h_L) ... p(x | h_1),   p(h_L) = N(0, I)

Each conditional is an MLP with tanh hidden units. Gaussian conditionals are diagonal with
std = exp(linear output); the Bernoulli output is parameterised by its logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IWAE", "GaussianMLP", "BernoulliMLP", "gaussian_log_prob", "bernoulli_output_bias"]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(h: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(h; mean, diag(exp(log_std))^2), summed over the last dimension.

    h, mean, log_std: [..., d] (broadcastable) -> [...]
    """
    z = (h - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI).sum(-1)


def bernoulli_output_bias(x_train: Tensor, clip: float = 0.001) -> Tensor:
    """logit of the training-set mean of each pixel, clipped to [clip, 1 - clip] (the paper's
    initial output bias). x_train: [n, x_dim] with values in [0, 1] -> [x_dim]."""
    mean = x_train.double().mean(0).clamp(clip, 1 - clip)
    return torch.logit(mean).float()


def _mlp(in_dim: int, hidden: Sequence[int]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for h in hidden:
        modules += [nn.Linear(in_dim, h), nn.Tanh()]
        in_dim = h
    return nn.Sequential(*modules)


class GaussianMLP(nn.Module):
    """tanh MLP -> diagonal Gaussian.

    forward(inp: [..., in_dim]) -> (mean, log_std), each [..., out_dim].
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        self.body = _mlp(in_dim, hidden)
        last = hidden[-1] if len(hidden) else in_dim
        self.mean = nn.Linear(last, out_dim)
        self.log_std = nn.Linear(last, out_dim)

    def forward(self, inp: Tensor) -> tuple[Tensor, Tensor]:
        a = self.body(inp)
        return self.mean(a), self.log_std(a)


class BernoulliMLP(nn.Module):
    """tanh MLP -> Bernoulli logits. forward(inp: [..., in_dim]) -> logits: [..., out_dim]."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        self.body = _mlp(in_dim, hidden)
        last = hidden[-1] if len(hidden) else in_dim
        self.logits = nn.Linear(last, out_dim)

    def forward(self, inp: Tensor) -> Tensor:
        return self.logits(self.body(inp))


def _check_layers(layers: Sequence[Sequence[int]]) -> list[tuple[tuple[int, ...], int]]:
    if len(layers) == 0:
        raise ValueError("layers must list at least one stochastic layer, e.g. [(200, 200, 50)]")
    out = []
    for i, spec in enumerate(layers):
        spec = tuple(int(s) for s in spec)
        if len(spec) < 1 or any(s <= 0 for s in spec):
            raise ValueError(
                f"layers[{i}] = {spec!r}: each stochastic layer is (hidden sizes..., latent size) "
                "with positive sizes, e.g. (200, 200, 50)"
            )
        out.append((spec[:-1], spec[-1]))
    return out


class IWAE(nn.Module):
    """VAE/IWAE model with any number of stochastic layers.

    Args:
        x_dim: size of a data point (784 for MNIST, 1 for the camel).
        layers: the stochastic layers, bottom first, each as (hidden sizes..., latent size):
            ``[(200, 200, 50)]`` (paper, 1 layer) or ``[(200, 200, 100), (100, 100, 50)]``
            (paper, 2 layers). The generative network mirrors the recognition network.
        likelihood: ``"bernoulli"`` (binary pixels, logits output) or ``"gaussian"``
            (real-valued data, learned mean and log-std).
        output_bias: initial bias of the output layer (for Bernoulli: use
            :func:`bernoulli_output_bias` of the training data, as the paper does).
    """

    def __init__(
        self,
        x_dim: int,
        layers: Sequence[Sequence[int]],
        likelihood: str = "bernoulli",
        output_bias: Tensor | None = None,
    ):
        super().__init__()
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        parsed = _check_layers(layers)
        self.x_dim = int(x_dim)
        self.layers = [tuple(int(s) for s in spec) for spec in layers]
        self.likelihood = likelihood
        self.latent_dims = [d for _, d in parsed]

        # Recognition network: q(h_1 | x), q(h_2 | h_1), ...
        in_dims = [self.x_dim] + self.latent_dims[:-1]
        self.encoder = nn.ModuleList(
            GaussianMLP(i, hidden, d) for i, (hidden, d) in zip(in_dims, parsed)
        )
        # Generative network, top-down: p(h_{L-1} | h_L), ..., p(h_1 | h_2), then p(x | h_1).
        decoder: list[nn.Module] = []
        for level in range(len(parsed) - 1, 0, -1):
            hidden, d = parsed[level]
            decoder.append(GaussianMLP(d, tuple(reversed(hidden)), self.latent_dims[level - 1]))
        hidden1, d1 = parsed[0]
        out_cls = BernoulliMLP if likelihood == "bernoulli" else GaussianMLP
        decoder.append(out_cls(d1, tuple(reversed(hidden1)), self.x_dim))
        self.decoder = nn.ModuleList(decoder)

        self.reset_parameters(output_bias)

    # ------------------------------------------------------------------ set-up
    @property
    def config(self) -> dict:
        """What is needed to rebuild the model (the weights live in ``state_dict``)."""
        return {"x_dim": self.x_dim, "layers": [list(s) for s in self.layers],
                "likelihood": self.likelihood}

    def reset_parameters(self, output_bias: Tensor | None = None) -> None:
        """Glorot-uniform weights, zero biases, and the given output bias."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if output_bias is not None:
            out = self.decoder[-1]
            layer = out.logits if isinstance(out, BernoulliMLP) else out.mean
            bias = torch.as_tensor(output_bias, dtype=layer.bias.dtype).reshape(-1)
            if bias.numel() != self.x_dim:
                raise ValueError(
                    f"output_bias has {bias.numel()} values, expected x_dim={self.x_dim}")
            with torch.no_grad():
                layer.bias.copy_(bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ densities
    def log_px_given_h(self, x: Tensor, h1: Tensor) -> Tensor:
        """log p(x | h_1). x: [batch, x_dim], h1: [k, batch, d_1] -> [k, batch]."""
        out = self.decoder[-1](h1)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(
                out, x.expand_as(out), reduction="none"
            ).sum(-1)
        mean, log_std = out
        return gaussian_log_prob(x, mean, log_std)

    def check_x(self, x: Tensor) -> None:
        """A ValueError naming the shape when ``x`` is not ``[batch, x_dim]``."""
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"x must have shape [batch, {self.x_dim}], got {tuple(x.shape)}; "
                "flatten images first, e.g. x.view(len(x), -1)"
            )

    def sample_q(
        self,
        x: Tensor,
        k: int = 1,
        *,
        eps: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        detach_q: bool = False,
    ) -> tuple[list[Tensor], Tensor]:
        """Draw h_l ~ q(h_l | h_{l-1}) by reparameterisation and return (hs, log q(hs | x)).

        x: [batch, x_dim] -> hs: [[k, batch, d_l] per layer], log_q: [k, batch].
        See :meth:`log_weights` for the arguments.
        """
        self.check_x(x)
        if k < 1:
            raise ValueError(f"k must be a positive number of samples, got {k}")
        batch = x.shape[0]
        log_q = x.new_zeros(k, batch)
        hs: list[Tensor] = []
        inp = x
        for level, q in enumerate(self.encoder):
            mean, log_std = q(inp)
            if eps is not None:
                e = eps[level]
            else:
                e = torch.randn(k, batch, mean.shape[-1], device=x.device, dtype=x.dtype,
                                generator=generator)
            h = mean + torch.exp(log_std) * e  # [k, batch, d_l]
            if detach_q:
                # q's parameters are held fixed; the path of the samples (h_l and its input
                # h_{l-1}) keeps its gradient.
                if level == 0:
                    mean, log_std = mean.detach(), log_std.detach()
                else:
                    frozen = {n: t.detach() for n, t in q.named_parameters()}
                    mean, log_std = torch.func.functional_call(q, frozen, (inp,))
            log_q = log_q + gaussian_log_prob(h, mean, log_std)
            hs.append(h)
            inp = h
        return hs, log_q

    def log_joint(self, x: Tensor, hs: Sequence[Tensor]) -> Tensor:
        """log p(x, h_1 .. h_L).

        x: [batch, x_dim], hs: [[k, batch, d_l] per layer] -> [k, batch]
        """
        top = hs[-1]
        log_p = (-0.5 * top.pow(2) - 0.5 * _LOG_2PI).sum(-1)  # log p(h_L), standard normal
        for i, p in enumerate(self.decoder[:-1]):  # p(h_{l-1} | h_l), top-down
            mean, log_std = p(hs[len(hs) - 1 - i])
            log_p = log_p + gaussian_log_prob(hs[len(hs) - 2 - i], mean, log_std)
        return log_p + self.log_px_given_h(x, hs[0])

    def log_weights(
        self,
        x: Tensor,
        k: int = 1,
        *,
        eps: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
        detach_q: bool = False,
    ) -> Tensor:
        """log w_i = log p(x, h_i) - log q(h_i | x) for k samples h_i ~ q(h | x).

        Args:
            x: [batch, x_dim], on the model's device.
            k: number of importance samples.
            eps: optional standard-normal noise, one tensor [k, batch, d_l] per stochastic
                layer (for reproducible or externally batched sampling); drawn if None.
            generator: random generator for the noise when ``eps`` is None.
            detach_q: evaluate log q with q's parameters held fixed (the "sticking the
                landing"/DReG trick); the samples keep their reparameterised path.

        Returns:
            log_w: [k, batch]
        """
        hs, log_q = self.sample_q(x, k, eps=eps, generator=generator, detach_q=detach_q)
        return self.log_joint(x, hs) - log_q

    # ------------------------------------------------------------------ utilities
    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per stochastic layer, the mean and std of q(h_l | h_{l-1}).

        Layer l > 1 is conditioned on the previous layer's mean (``sample=False``) or on one
        sample of it (``sample=True``, as in the authors' active-unit code).

        x: [batch, x_dim] -> [(mean [batch, d_l], std [batch, d_l]) for each layer]
        """
        self.check_x(x)
        out = []
        inp = x
        for q in self.encoder:
            mean, log_std = q(inp)
            std = torch.exp(log_std)
            out.append((mean, std))
            if sample:
                inp = mean + std * torch.randn(mean.shape, device=mean.device, dtype=mean.dtype,
                                               generator=generator)
            else:
                inp = mean
        return out

    @torch.no_grad()
    def decode(self, h1: Tensor) -> Tensor:
        """The mean of p(x | h_1): pixel probabilities (Bernoulli) or means (Gaussian).

        h1: [..., d_1] -> [..., x_dim]
        """
        out = self.decoder[-1](h1)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out[0]

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True,
               generator: torch.Generator | None = None) -> Tensor:
        """n draws from the generative model. With ``mean=True`` returns E[x | h_1] (pixel
        probabilities for Bernoulli), else a sample of x. -> [n, x_dim]"""
        dev = self.device
        h = torch.randn(n, self.latent_dims[-1], device=dev, generator=generator)
        for p in self.decoder[:-1]:
            m, log_std = p(h)
            h = m + torch.exp(log_std) * torch.randn(m.shape, device=dev, generator=generator)
        out = self.decoder[-1](h)
        if self.likelihood == "bernoulli":
            probs = torch.sigmoid(out)
            return probs if mean else torch.bernoulli(probs, generator=generator)
        m, log_std = out
        return m if mean else m + torch.exp(log_std) * torch.randn(
            m.shape, device=dev, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Encode with the posterior means, decode with the conditional means. -> [batch, x_dim]"""
        h = self.encode(x)[-1][0]
        for p in self.decoder[:-1]:
            h = p(h)[0]
        return self.decode(h)
