"""IWAE with random network weights (IWAER, IWAERrec): factorised Gaussians over the weights.

Instead of point estimates of the decoder's theta and the encoder's phi, each linear layer
holds a mean and a log-std per weight and per bias, q(theta) and q(phi); each of the k
importance samples uses its own draw of the weights (reparameterised):

    L = E[ log (1/k) sum_j p(x | z_j, theta_j) p(z_j) / q(z_j | x, phi_j) ],
        theta_j ~ q(theta), phi_j ~ q(phi), z_j ~ q(z | x, phi_j).

There is no prior on the weights: q(theta) is the model's weight distribution, so L is a lower
bound on log of the marginal p(x) = int int p(x | z, theta) p(z) q(theta) dz dtheta. The
samples (theta_j, phi_j, z_j) come from r = q(theta) q(phi) q(z | x, phi), and the weight is
f / r for f = p(x | z, theta) p(z) q(theta) q(phi), whose integral is p(x) (phi is an
auxiliary variable: q(phi) integrates to one), so E[w] = p(x) and Jensen's inequality gives
L <= log p(x), as for the IWAE.

How weight samples are shared: one draw per importance sample j and per minibatch, shared by
all data points of the minibatch (a [k, out, in] weight tensor per layer and step, applied with
batched matmuls). It is the cheap, standard choice; its consequence is that the k terms of
different data points in one minibatch are correlated through the shared weights, so the
minibatch gradient is noisier than with independent draws per data point (it stays unbiased
for the mean of the per-point bounds), and the same holds for the L_k estimates of a batch.

``random="none" | "recognition" | "both"``: which networks get random weights (IWAE, IWAERrec,
IWAER). The means start at the plain model's initialisation (the paper's Glorot-uniform
weights, the output bias from the data) and every log-std at ``init_log_std`` (default -6: a
standard deviation of 0.0025, small next to the weights' scale of about 0.05 to 0.1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from .models import IWAE

__all__ = ["RandomLinear", "RandomWeightsIWAE", "RANDOM", "weight_stds"]

#: which networks have random weights, by the name the seed gives the model
RANDOM = {"none": "IWAE", "recognition": "IWAERrec", "both": "IWAER"}


class RandomLinear(nn.Module):
    """A linear layer with W ~ N(weight_mean, exp(weight_log_std)^2), b likewise, element-wise.

    Each forward pass draws ``self.draws`` independent (W, b) (set by the model per call).
    forward(inp: [draws, batch, in] or [batch, in]) -> [draws, batch, out]; with one draw and a
    2-D input, [batch, out] (so that ``IWAE.encode``/``decode`` work unchanged).
    """

    def __init__(self, linear: nn.Linear, init_log_std: float = -6.0):
        super().__init__()
        w, b = linear.weight.detach(), linear.bias.detach()
        self.weight_mean = nn.Parameter(w.clone())
        self.weight_log_std = nn.Parameter(torch.full_like(w, init_log_std))
        self.bias_mean = nn.Parameter(b.clone())
        self.bias_log_std = nn.Parameter(torch.full_like(b, init_log_std))
        self.draws = 1
        self.generator: torch.Generator | None = None

    def forward(self, inp: Tensor) -> Tensor:
        k = self.draws
        shape_w, shape_b = (k, *self.weight_mean.shape), (k, 1, self.bias_mean.shape[0])
        opts = dict(device=inp.device, dtype=inp.dtype, generator=self.generator)
        w = self.weight_mean + self.weight_log_std.exp() * torch.randn(shape_w, **opts)
        b = (self.bias_mean + self.bias_log_std.exp() * torch.randn(shape_b, **opts))
        flat = inp.dim() == 2
        if flat:
            inp = inp.expand(k, *inp.shape)
        out = torch.baddbmm(b, inp, w.transpose(1, 2))  # [k, batch, out]
        return out[0] if flat and k == 1 else out


def _randomize(module: nn.Module, init_log_std: float) -> None:
    """Replace every nn.Linear inside ``module`` by a RandomLinear with its weights as means."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, RandomLinear(child, init_log_std))
        else:
            _randomize(child, init_log_std)


class RandomWeightsIWAE(IWAE):
    """The :class:`~iwae_tutorial.models.IWAE` (same networks, likelihoods and bounds) with
    random weights in the recognition network, or in both networks.

    Args: those of ``IWAE``, and
        random: "none" (the IWAE), "recognition" (IWAERrec) or "both" (IWAER).
        init_log_std: the initial log-std of every weight and bias.
    """

    def __init__(self, x_dim: int, layers: Sequence[Sequence[int]], random: str = "both",
                 init_log_std: float = -6.0, likelihood: str = "bernoulli",
                 output_bias: Tensor | None = None):
        if random not in RANDOM:
            raise ValueError(f"random must be one of {sorted(RANDOM)}, got {random!r}")
        super().__init__(x_dim, layers, likelihood=likelihood, output_bias=output_bias)
        self.random, self.init_log_std = random, float(init_log_std)
        for net in {"none": [], "recognition": [self.encoder],
                    "both": [self.encoder, self.decoder]}[random]:
            _randomize(net, init_log_std)

    @classmethod
    def from_model(cls, model: IWAE, random: str = "both",
                   log_std: float = -6.0) -> RandomWeightsIWAE:
        """A random-weights copy of a trained plain ``model``: its weights become the means,
        every log-std is ``log_std`` (``-inf``: zero variance, the plain model exactly)."""
        out = cls(model.x_dim, model.layers, random=random, init_log_std=log_std,
                  likelihood=model.likelihood).to(next(model.parameters()))
        plain = dict(model.named_modules())
        with torch.no_grad():
            for name, m in out.named_modules():
                src = plain[name]
                if isinstance(m, RandomLinear):
                    m.weight_mean.copy_(src.weight)
                    m.bias_mean.copy_(src.bias)
                elif isinstance(m, nn.Linear):
                    m.load_state_dict(src.state_dict())
        return out

    @property
    def config(self) -> dict:
        return {**super().config, "random": self.random, "init_log_std": self.init_log_std}

    def random_layers(self) -> list[RandomLinear]:
        return [m for m in self.modules() if isinstance(m, RandomLinear)]

    @contextlib.contextmanager
    def weight_draws(self, k: int, generator: torch.Generator | None = None) -> Iterator[None]:
        """Within the block every random layer draws ``k`` weight samples per forward pass."""
        layers = self.random_layers()
        for m in layers:
            m.draws, m.generator = int(k), generator
        try:
            yield
        finally:
            for m in layers:
                m.draws, m.generator = 1, None

    def log_weights(self, x: Tensor, k: int = 1, *, eps: Sequence[Tensor] | None = None,
                    generator: torch.Generator | None = None, detach_q: bool = False) -> Tensor:
        """log w_j = log p(x, z_j | theta_j) - log q(z_j | x, phi_j), one weight draw per j
        (shared by the minibatch). x: [batch, x_dim] -> [k, batch]."""
        with self.weight_draws(k, generator):
            return super().log_weights(x, k, eps=eps, generator=generator, detach_q=detach_q)


def weight_stds(model: RandomWeightsIWAE) -> dict[str, Tensor]:
    """The learned standard deviations of every random layer's weights, flattened, by layer
    name ("encoder.0.body.0", ...). -> {name: [n_weights]}"""
    return {name: m.weight_log_std.detach().exp().flatten().cpu()
            for name, m in model.named_modules() if isinstance(m, RandomLinear)}
