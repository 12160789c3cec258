"""Computations on latent spaces: exact posteriors on a grid, decoded manifolds, interpolations,
and reconstructions.

With a 2-D latent space the true posterior of a one-stochastic-layer model,

    p(z | x) = p(x | z) p(z) / p(x),

can be evaluated on a grid of z: exact up to the normalising constant p(x), which the grid
supplies by quadrature (``logsumexp`` of the log-joint plus the log cell area). Everything is
done in log space. The recognition network's q(z | x) is an explicit Gaussian, so the two can be
compared cell by cell: :func:`posterior_stats` gives, per data point, the quadrature estimate of
log p(x), the ELBO, KL(q || p), KL(p || q), and the *coverage*: the true posterior mass inside
q's central ellipse of probability ``level`` (0.95 by default). A q that matches the posterior
covers 0.95 of it; a q that is too narrow covers less.

Shapes: ``B`` data points, ``G`` grid points, ``d`` latent dimensions (``d = 2`` for the grid
functions; :class:`LatentGrid` is 2-D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .models import IWAE, BernoulliMLP, gaussian_log_prob

__all__ = [
    "LatentGrid",
    "grid_2d",
    "GridLikelihood",
    "log_joint_grid",
    "posterior_grid",
    "log_marginal_grid",
    "q_density_grid",
    "PosteriorStats",
    "posterior_stats",
    "coverage_radius2",
    "encode_means",
    "neighbour_agreement",
    "q_width",
    "traverse_unit",
    "decode_grid",
    "slerp",
    "interpolate",
    "reconstruction_metrics",
    "ReconstructionMetrics",
]

_LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class LatentGrid:
    """A regular 2-D grid of latent points with equal cells.

    ``xs: [n_x]`` (first coordinate z_1), ``ys: [n_y]`` (second coordinate z_2), both increasing
    and evenly spaced. :attr:`points` lists the ``G = n_y * n_x`` points with z_2 outer, so any
    per-point tensor ``[..., G]`` reshapes to ``[..., n_y, n_x]`` with rows = z_2 (draw it with
    ``origin="lower"`` or ``contour(xs, ys, ...)``).
    """

    xs: Tensor
    ys: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """(n_y, n_x): the shape of a per-point tensor laid out as an image."""
        return (len(self.ys), len(self.xs))

    @property
    def points(self) -> Tensor:
        """[G, 2] the grid points, z_2 outer, z_1 inner."""
        zy, zx = torch.meshgrid(self.ys, self.xs, indexing="ij")
        return torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=-1)

    @property
    def cell_area(self) -> float:
        """Area of one cell (dz_1 * dz_2)."""
        return float((self.xs[1] - self.xs[0]) * (self.ys[1] - self.ys[0]))

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(z1_min, z1_max, z2_min, z2_max), for ``imshow(extent=...)``."""
        return (float(self.xs[0]), float(self.xs[-1]), float(self.ys[0]), float(self.ys[-1]))

    def edge_mask(self, width: int = 1) -> Tensor:
        """[G] True for the points within ``width`` cells of the border."""
        ny, nx = self.shape
        m = torch.zeros(ny, nx, dtype=torch.bool)
        m[:width, :] = m[-width:, :] = True
        m[:, :width] = m[:, -width:] = True
        return m.reshape(-1)


def grid_2d(span: float | Sequence[float], n: int = 201,
            center: Sequence[float] = (0.0, 0.0), dtype: torch.dtype = torch.float32
            ) -> LatentGrid:
    """A square grid of ``n x n`` points covering ``center +- span`` in each coordinate
    (``span`` may be a pair: half-widths for z_1 and z_2)."""
    if n < 2:
        raise ValueError(f"a grid needs at least 2 points per side, got n={n}")
    sx, sy = (float(span), float(span)) if not isinstance(span, Sequence) else map(float, span)
    cx, cy = (float(c) for c in center)
    return LatentGrid(torch.linspace(cx - sx, cx + sx, n, dtype=dtype),
                      torch.linspace(cy - sy, cy + sy, n, dtype=dtype))


def _as_points(grid: LatentGrid | Tensor) -> Tensor:
    return grid.points if isinstance(grid, LatentGrid) else grid


def _check_grid_model(model: IWAE, points: Tensor) -> None:
    if len(model.latent_dims) != 1:
        raise ValueError(
            "grid posteriors need a model with one stochastic layer (p(x | z) p(z) with z on the "
            f"grid); this model has {len(model.latent_dims)} layers")
    if points.dim() != 2 or points.shape[-1] != model.latent_dims[0]:
        raise ValueError(f"grid points must be [G, {model.latent_dims[0]}] for this model, got "
                         f"{tuple(points.shape)}")


class GridLikelihood:
    """log p(x, z) on a fixed grid for any x, with the decoder run once for the grid.

    For Bernoulli pixels, log p(x | z) = x . l(z) - sum softplus(l(z)) is one matrix product
    with the stored logits l(z) ([G, x_dim], kept on the model's device; float32, 4 bytes per
    pixel and grid point); Gaussian decoders are evaluated directly.

    ``GridLikelihood(model, grid)(x: [B, x_dim]) -> [B, G]`` float64.
    """

    def __init__(self, model: IWAE, grid: LatentGrid | Tensor, chunk: int = 8192):
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.points = _as_points(grid).to(model.device, self.dtype)
        _check_grid_model(model, self.points)
        self.chunk = chunk
        self.log_prior = (-0.5 * self.points.pow(2) - 0.5 * _LOG_2PI).sum(-1)  # [G]
        self.bernoulli = isinstance(model.decoder[-1], BernoulliMLP)
        if self.bernoulli:
            with torch.no_grad():
                logits = [model.decoder[-1](self.points[s:s + chunk])
                          for s in range(0, self.points.shape[0], chunk)]
            self.logits = torch.cat(logits)  # [G, x_dim]
            self.const = F.softplus(self.logits).sum(-1) - self.log_prior  # [G]

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        self.model.check_x(x)
        x = x.to(self.model.device, self.dtype)
        if self.bernoulli:
            return (x @ self.logits.T - self.const).double()
        out = []
        for s in range(0, self.points.shape[0], self.chunk):
            mean, log_std = self.model.decoder[-1](self.points[s:s + self.chunk])  # [g, x_dim]
            log_px = gaussian_log_prob(x[:, None, :], mean[None], log_std[None])  # [B, g]
            out.append((log_px + self.log_prior[s:s + self.chunk]).double())
        return torch.cat(out, dim=1)


def log_joint_grid(model: IWAE, x: Tensor, grid: LatentGrid | Tensor,
                   chunk: int = 8192) -> Tensor:
    """log p(x, z) = log p(x | z) + log N(z; 0, I) at every grid point, in float64.

    The decoder runs once per grid point, shared by all data points (see
    :class:`GridLikelihood`, which also keeps the decoded grid for repeated calls).

    x: [B, x_dim], grid: LatentGrid or points [G, d] -> [B, G]
    """
    return GridLikelihood(model, grid, chunk)(x)


def posterior_grid(model: IWAE, x: Tensor, grid: LatentGrid | Tensor,
                   chunk: int = 8192) -> Tensor:
    """The true posterior p(z | x) as log probability masses of the grid cells.

    log p(z_g | x) + log(cell area), normalised on the grid with ``logsumexp``: exact up to the
    quadrature (the grid must cover the posterior and resolve it). ``exp`` of the result sums to
    one over the grid for every data point.

    x: [B, x_dim], grid: LatentGrid or points [G, d] (equal cells) -> [B, G] float64
    """
    lj = log_joint_grid(model, x, grid, chunk)
    return lj - torch.logsumexp(lj, dim=1, keepdim=True)


def log_marginal_grid(model: IWAE, x: Tensor, grid: LatentGrid, chunk: int = 8192) -> Tensor:
    """log p(x) = log integral p(x, z) dz by the midpoint rule on the grid, in float64.

    For a smooth posterior that the grid covers, this is exact to many digits once the spacing
    is below the posterior's width. x: [B, x_dim] -> [B]
    """
    lj = log_joint_grid(model, x, grid, chunk)
    return torch.logsumexp(lj, dim=1) + math.log(grid.cell_area)


@torch.no_grad()
def q_density_grid(model: IWAE, x: Tensor, grid: LatentGrid | Tensor,
                   normalize: bool = False) -> Tensor:
    """The recognition density log q(z | x) at every grid point, in float64.

    With ``normalize=False`` the exact log density of the Gaussian; with ``normalize=True`` log
    masses of the grid cells normalised to sum to one (comparable with :func:`posterior_grid`).

    x: [B, x_dim], grid: LatentGrid or points [G, d] -> [B, G]
    """
    points = _as_points(grid).to(model.device).double()
    _check_grid_model(model, points)
    mean, std = model.encode(x.to(model.device))[0]  # [B, d] each
    log_q = gaussian_log_prob(points[None], mean.double()[:, None], std.double().log()[:, None])
    if normalize:
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q


def coverage_radius2(level: float, d: int = 2) -> float:
    """Squared Mahalanobis radius of the central ellipse holding probability ``level`` of a
    d-dimensional Gaussian: the chi-squared quantile (for d = 2: -2 log(1 - level))."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if d == 2:
        return -2.0 * math.log1p(-level)
    from scipy.stats import chi2

    return float(chi2.ppf(level, d))


@dataclass
class PosteriorStats:
    """Per data point (all ``[B]`` unless noted), from the grid:

    - ``log_px``: log p(x) by quadrature;  ``elbo``: E_q[log p(x, z) - log q(z | x)];
    - ``kl_q_p`` = KL(q || p(z|x)) = log_px - elbo (the VAE's gap);  ``kl_p_q`` = KL(p || q);
    - ``coverage``: the posterior mass inside q's central ellipse of probability ``level``;
    - ``q_in_post``: the other way round, q's mass inside the smallest grid region that holds
      ``level`` of the posterior (its highest-density region). Both are ``level`` for q = p; a
      q much broader than the posterior has a high coverage and a low ``q_in_post``;
    - ``post_mean [B, d]``, ``post_cov [B, d, d]``: moments of the true posterior;
      ``q_mean``, ``q_std [B, d]``: q's parameters;
    - ``std_ratio``: (det Cov_q / det Cov_p)^(1/2d), the geometric mean of how much wider q is
      than the posterior (> 1: q broader, < 1: q narrower);
    - ``edge_mass``: the posterior mass in the grid's border cells (should be ~0).
    """

    log_px: Tensor
    elbo: Tensor
    kl_q_p: Tensor
    kl_p_q: Tensor
    coverage: Tensor
    q_in_post: Tensor
    post_mean: Tensor
    post_cov: Tensor
    q_mean: Tensor
    q_std: Tensor
    std_ratio: Tensor
    edge_mass: Tensor
    level: float

    def summary(self) -> dict[str, float]:
        """Averages over the data points (``std_ratio`` as a geometric mean)."""
        return {
            "log_px": float(self.log_px.mean()), "elbo": float(self.elbo.mean()),
            "kl_q_p": float(self.kl_q_p.mean()), "kl_p_q": float(self.kl_p_q.mean()),
            "coverage": float(self.coverage.mean()), "q_in_post": float(self.q_in_post.mean()),
            "std_ratio": float(self.std_ratio.log().mean().exp()),
            "max_edge_mass": float(self.edge_mass.max()),
        }


@torch.no_grad()
def posterior_stats(model: IWAE, x: Tensor, grid: LatentGrid, level: float = 0.95,
                    batch_size: int = 100, chunk: int = 8192) -> PosteriorStats:
    """Compare q(z | x) with the true posterior on ``grid`` for every row of ``x``.

    Masses are taken at the grid points (midpoint rule) in float64. The ELBO and the KLs use
    q's exact log density and the posterior's quadrature-normalised one:
    ``log p(z | x) = log p(x, z) - log_px``.

    x: [B, x_dim] -> :class:`PosteriorStats` (see there for the fields).
    """
    points = grid.points.double()
    log_cell = math.log(grid.cell_area)
    r2 = coverage_radius2(level, points.shape[1])
    edge = grid.edge_mask().to(model.device)
    log_joint = GridLikelihood(model, grid, chunk)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(model.device)
        lj = log_joint(xb)  # [b, G]
        log_px = torch.logsumexp(lj, dim=1) + log_cell
        log_post = lj - log_px[:, None]  # log density of p(z | x)
        p_mass = (log_post + log_cell).exp()  # [b, G], sums to ~1
        log_q = q_density_grid(model, xb, grid)  # log density
        q_mass = (log_q + log_cell).exp()
        q_tot = q_mass.sum(1)  # < 1 when q leaks out of the grid
        elbo = (q_mass * (lj - log_q)).sum(1) / q_tot
        kl_q_p = (q_mass * (log_q - log_post)).sum(1) / q_tot
        kl_p_q = (p_mass * (log_post - log_q)).sum(1)
        mean, std = model.encode(xb)[0]
        mean, std = mean.double(), std.double()
        pts = points.to(model.device)
        maha = (((pts[None] - mean[:, None]) / std[:, None]) ** 2).sum(-1)  # [b, G]
        coverage = (p_mass * (maha <= r2)).sum(1)
        # the posterior's highest-density region: the largest masses, up to ``level`` in all
        p_sorted, order = p_mass.sort(dim=1, descending=True)
        in_hdr_sorted = (p_sorted.cumsum(1) - p_sorted) < level * p_mass.sum(1, keepdim=True)
        in_hdr = torch.zeros_like(in_hdr_sorted).scatter_(1, order, in_hdr_sorted)
        q_in_post = (q_mass * in_hdr).sum(1) / q_tot
        pm = p_mass @ pts  # [b, d]
        centred = pts[None] - pm[:, None]  # [b, G, d]
        cov = torch.einsum("bg,bgi,bgj->bij", p_mass, centred, centred)
        ratio = (std.log().sum(1) - 0.5 * torch.logdet(cov)).div(points.shape[1]).exp()
        for name, val in dict(log_px=log_px, elbo=elbo, kl_q_p=kl_q_p, kl_p_q=kl_p_q,
                              coverage=coverage, q_in_post=q_in_post, post_mean=pm,
                              post_cov=cov, q_mean=mean, q_std=std, std_ratio=ratio,
                              edge_mass=(p_mass * edge).sum(1)).items():
            parts.setdefault(name, []).append(val.cpu())
    return PosteriorStats(**{k: torch.cat(v) for k, v in parts.items()}, level=level)


# --------------------------------------------------------------------------- encode / decode
@torch.no_grad()
def encode_means(model: IWAE, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Means of q(h_1 | x), the first stochastic layer. x: [n, x_dim] -> [n, d_1] (CPU)."""
    out = [model.encode(x[s:s + batch_size].to(model.device))[0][0].cpu()
           for s in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def neighbour_agreement(z: Tensor, labels: Tensor) -> float:
    """The fraction of points whose nearest other point (Euclidean, in z) has the same label:
    how well the codes separate the classes without ever seeing them (chance: about 1 / number
    of classes). z: [n, d], labels: [n] -> a number in [0, 1]."""
    z = z.double()
    dist = torch.cdist(z, z)
    dist.fill_diagonal_(float("inf"))
    return float((labels[dist.argmin(1)] == labels).double().mean())


@torch.no_grad()
def q_width(model: IWAE, x: Tensor, units: Tensor | None = None,
            batch_size: int = 1000) -> float:
    """How wide q(h_1 | x) is: the geometric mean of its standard deviations over the data
    points and the chosen ``units`` (a boolean mask [d_1], e.g. the active units; default
    all). x: [n, x_dim] -> a positive number."""
    log_std = torch.cat([model.encode(x[s:s + batch_size].to(model.device))[0][1].log().cpu()
                         for s in range(0, x.shape[0], batch_size)])  # [n, d_1]
    if units is not None:
        log_std = log_std[:, units.cpu()]
    return float(log_std.double().mean().exp())


@torch.no_grad()
def traverse_unit(model: IWAE, x: Tensor, unit: int, values: Tensor | Sequence[float]) -> Tensor:
    """Move one unit of the code of x and decode: the mean of q(h_1 | x) with unit ``unit``
    set to each of ``values`` in turn, the other units kept. An inactive unit (its posterior
    mean does not move with x) should change nothing the decoder draws.

    x: [x_dim] (one image), values: [m] -> pixel probabilities [m, x_dim] (CPU)
    """
    h = encode_means(model, x.reshape(1, -1))[0]
    if not 0 <= unit < h.numel():
        raise ValueError(f"unit {unit} is not one of the {h.numel()} units of the first layer")
    values = torch.as_tensor(values, dtype=h.dtype)
    codes = h.repeat(values.numel(), 1)
    codes[:, unit] = values
    return model.decode(codes.to(model.device)).cpu()


@torch.no_grad()
def decode_grid(model: IWAE, n: int = 15, span: float = 3.0) -> Tensor:
    """Decode an ``n x n`` grid of z in [-span, span]^2: the classic image of the manifold.

    Returns the decoder's means (pixel probabilities) laid out as a picture: ``[n, n, x_dim]``,
    where entry ``[i, j]`` is the image at z = (zs[j], zs[n - 1 - i]) with
    ``zs = linspace(-span, span, n)`` (z_2 grows upwards, z_1 to the right).
    """
    if model.latent_dims[0] != 2:
        raise ValueError(f"decode_grid needs a 2-D first latent layer, got {model.latent_dims}")
    g = grid_2d(span, n)
    images = model.decode(g.points.to(model.device)).cpu()  # [n*n, x_dim], z_2 outer
    return images.reshape(n, n, -1).flip(0)


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between a and b (on the great circle through them, with the norm
    interpolated linearly). a, b: [d]; t: [steps] in [0, 1] -> [steps, d]."""
    na, nb = a.norm(), b.norm()
    cos = torch.clamp((a @ b) / (na * nb).clamp_min(1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    t = t[:, None].to(a.dtype)
    if float(omega) < 1e-6:  # (anti-)parallel to numerical precision: fall back to lines
        return (1 - t) * a + t * b
    ua, ub = a / na, b / nb
    direction = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / torch.sin(omega)
    return direction * ((1 - t) * na + t * nb)


@torch.no_grad()
def interpolate(model: IWAE, x_a: Tensor, x_b: Tensor, steps: int = 10,
                spherical: bool = False) -> tuple[Tensor, Tensor]:
    """Decode a path between the encodings (means of q(h_1 | x)) of two data points.

    Linear in z by default; ``spherical=True`` follows :func:`slerp`, which keeps the path at
    the typical norm of a high-dimensional Gaussian instead of cutting through its low-norm
    centre. The first and last z are exactly the encodings of x_a and x_b.

    x_a, x_b: [x_dim] -> (z: [steps, d_1], images: [steps, x_dim] decoder means), on the CPU.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    z_ab = encode_means(model, torch.stack([x_a.reshape(-1), x_b.reshape(-1)]))
    za, zb = z_ab[0], z_ab[1]
    t = torch.linspace(0, 1, steps, dtype=za.dtype)
    z = slerp(za, zb, t) if spherical else (1 - t[:, None]) * za + t[:, None] * zb
    z[0], z[-1] = za, zb  # exact endpoints whatever the rounding
    return z, model.decode(z.to(model.device)).cpu()


@dataclass
class ReconstructionMetrics:
    """Per data point ([n]): ``log_lik_mean`` = log p(x | z = mean of q), ``log_lik_sampled``
    = E_q[log p(x | z)] (Monte Carlo, the ELBO's reconstruction term), ``pixel_error`` = mean
    absolute difference between the grey image and the reconstruction's pixel probabilities."""

    log_lik_mean: Tensor
    log_lik_sampled: Tensor
    pixel_error: Tensor

    def summary(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in asdict(self).items()}


@torch.no_grad()
def reconstruction_metrics(model: IWAE, x_grey: Tensor, x_binary: Tensor, n_samples: int = 10,
                           batch_size: int = 500,
                           generator: torch.Generator | None = None) -> ReconstructionMetrics:
    """How well a one-layer model reconstructs: see :class:`ReconstructionMetrics`.

    x_grey: [n, x_dim] grey values (for the pixel error), x_binary: [n, x_dim] a binarization
    of them (for the log-likelihoods, in nats per image).
    """
    if len(model.latent_dims) != 1:
        raise ValueError("reconstruction_metrics expects a model with one stochastic layer")
    parts: dict[str, list[Tensor]] = {"log_lik_mean": [], "log_lik_sampled": [],
                                      "pixel_error": []}
    for s in range(0, x_grey.shape[0], batch_size):
        xg = x_grey[s:s + batch_size].to(model.device)
        xb = x_binary[s:s + batch_size].to(model.device)
        mean, std = model.encode(xb)[0]
        parts["log_lik_mean"].append(model.log_px_given_h(xb, mean[None])[0].cpu())
        eps = torch.randn((n_samples, *mean.shape), device=mean.device, generator=generator)
        parts["log_lik_sampled"].append(
            model.log_px_given_h(xb, mean + std * eps).mean(0).cpu())
        parts["pixel_error"].append((model.decode(mean) - xg).abs().mean(-1).cpu())
    return ReconstructionMetrics(**{k: torch.cat(v).double() for k, v in parts.items()})
