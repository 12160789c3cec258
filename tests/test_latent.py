import json
import math

import matplotlib
import pytest
import torch

from iwae_tutorial import latent, runs
from iwae_tutorial.models import IWAE
from iwae_tutorial.train import save_checkpoint

matplotlib.use("Agg")


def _linear_gaussian(exact_q: bool = True, q_log_std_shift: float = 0.0):
    """p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I) with orthogonal columns of W (so the true
    posterior has a diagonal covariance), x of dimension 3, z of dimension 2; q set to the exact
    posterior (optionally narrowed by exp(q_log_std_shift))."""
    torch.manual_seed(0)
    m = IWAE(3, [(2,)], likelihood="gaussian").double()
    W = torch.tensor([[1.0, 0.5], [0.5, -1.0], [0.3, 0.4]], dtype=torch.float64)
    W[:, 1] -= (W[:, 0] @ W[:, 1]) / (W[:, 0] @ W[:, 0]) * W[:, 0]  # orthogonal columns
    b = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    s = 0.6
    dec = m.decoder[-1]
    enc = m.encoder[0]
    cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + W.T @ W / s**2)
    A = cov @ W.T / s**2
    with torch.no_grad():
        dec.mean.weight.copy_(W)
        dec.mean.bias.copy_(b)
        dec.log_std.weight.zero_()
        dec.log_std.bias.fill_(math.log(s))
        if exact_q:
            enc.mean.weight.copy_(A)
            enc.mean.bias.copy_(-A @ b)
            enc.log_std.weight.zero_()
            enc.log_std.bias.copy_(0.5 * torch.log(torch.diagonal(cov)) + q_log_std_shift)
    return m, W, b, s, cov, A


def test_grid_posterior_of_a_linear_gaussian_model_matches_the_analytic_posterior():
    m, W, b, s, cov, A = _linear_gaussian(exact_q=False)
    x = torch.tensor([[0.5, 1.0, -0.4], [-1.0, 0.2, 0.8]], dtype=torch.float64)
    grid = latent.grid_2d(5.0, 161, dtype=torch.float64)
    st = latent.posterior_stats(m, x, grid)
    mean = (A @ (x - b).T).T
    assert torch.allclose(st.post_mean, mean, atol=1e-6)
    assert torch.allclose(st.post_cov, cov.expand(2, 2, 2), atol=1e-6)
    # log p(x) by quadrature against N(x; b, W W^T + s^2 I)
    marg = torch.distributions.MultivariateNormal(b, W @ W.T + s**2 * torch.eye(3,
                                                                                 dtype=W.dtype))
    assert torch.allclose(latent.log_marginal_grid(m, x, grid), marg.log_prob(x), atol=1e-8)
    assert torch.allclose(st.log_px, marg.log_prob(x), atol=1e-8)
    # the density of the grid posterior is the analytic one
    log_post = latent.posterior_grid(m, x, grid) - math.log(grid.cell_area)
    exact = torch.distributions.MultivariateNormal(mean[0], cov).log_prob(grid.points.double())
    top = log_post[0] > log_post[0].max() - 10
    assert torch.allclose(log_post[0][top], exact[top], atol=1e-6)


def test_grid_masses_sum_to_one():
    torch.manual_seed(0)
    m = IWAE(20, [(16, 2)])
    x = torch.bernoulli(torch.full((4, 20), 0.4))
    grid = latent.grid_2d(6.0, 81)
    for log_mass in (latent.posterior_grid(m, x, grid),
                     latent.q_density_grid(m, x, grid, normalize=True)):
        assert log_mass.shape == (4, 81 * 81)
        assert torch.allclose(log_mass.exp().sum(1), torch.ones(4, dtype=torch.float64),
                              atol=1e-10)


def test_bernoulli_fast_path_equals_the_models_log_joint():
    torch.manual_seed(1)
    m = IWAE(30, [(12, 2)], output_bias=torch.randn(30))
    x = torch.bernoulli(torch.full((3, 30), 0.3))
    pts = torch.randn(50, 2) * 2
    ref = m.log_joint(x, [pts[:, None, :].expand(50, 3, 2)]).T  # [3, 50]
    got = latent.log_joint_grid(m, x, pts, chunk=7)  # chunks must not matter
    assert torch.allclose(got.float(), ref, atol=1e-4)


def test_exact_q_covers_its_level_and_a_narrow_q_does_not():
    x = torch.tensor([[0.5, 1.0, -0.4], [2.0, -1.0, 0.0]], dtype=torch.float64)
    grid = latent.grid_2d(5.0, 161, dtype=torch.float64)
    exact = latent.posterior_stats(latent_model := _linear_gaussian()[0], x, grid, level=0.95)
    assert torch.allclose(exact.coverage, torch.full((2,), 0.95, dtype=torch.float64),
                          atol=0.01)
    assert torch.allclose(exact.q_in_post, torch.full((2,), 0.95, dtype=torch.float64),
                          atol=0.01)
    assert torch.allclose(exact.kl_q_p, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(exact.kl_p_q, torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(exact.elbo, exact.log_px, atol=1e-6)
    assert torch.allclose(exact.std_ratio, torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert exact.edge_mass.max() < 1e-8
    # halving q's standard deviations: it covers far less, KL > 0, std ratio 0.5
    narrow = latent.posterior_stats(_linear_gaussian(q_log_std_shift=math.log(0.5))[0], x, grid)
    assert narrow.coverage.max() < 0.6
    assert narrow.q_in_post.min() > 0.99  # ... but all of it lies where the posterior is
    assert narrow.kl_q_p.min() > 0.1 and narrow.kl_p_q.min() > narrow.kl_q_p.min()
    assert torch.allclose(narrow.std_ratio, torch.full((2,), 0.5, dtype=torch.float64))
    # ELBO from the grid equals log p(x) - KL(q || p), and matches a Monte Carlo ELBO
    assert torch.allclose(narrow.elbo, narrow.log_px - narrow.kl_q_p, atol=1e-10)
    lw = latent_model.log_weights(x, 20000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lw.mean(0), exact.elbo, atol=1e-6)  # zero-variance weights at q = p


def test_interpolation_endpoints_are_the_encodings():
    torch.manual_seed(2)
    m = IWAE(20, [(16, 5)])
    xa, xb = torch.bernoulli(torch.full((2, 20), 0.5))
    enc = latent.encode_means(m, torch.stack([xa, xb]))
    for spherical in (False, True):
        z, imgs = latent.interpolate(m, xa, xb, steps=7, spherical=spherical)
        assert z.shape == (7, 5) and imgs.shape == (7, 20)
        assert torch.equal(z[0], enc[0]) and torch.equal(z[-1], enc[1])
        assert torch.allclose(imgs[0], m.decode(enc[0]))
    z, _ = latent.interpolate(m, xa, xb, steps=3)
    assert torch.allclose(z[1], enc.mean(0))


def test_slerp_keeps_the_norm_between_equal_norm_points():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 3.0, 0.0])
    path = latent.slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path.norm(dim=1), torch.full((5,), 3.0))
    assert torch.allclose(path[2], torch.tensor([1.0, 1.0, 0.0]) * 3 / math.sqrt(2))


def test_decode_grid_layout():
    torch.manual_seed(3)
    m = IWAE(20, [(8, 2)])
    imgs = latent.decode_grid(m, n=5, span=2.0)
    assert imgs.shape == (5, 5, 20)
    assert torch.allclose(imgs[0, 0], m.decode(torch.tensor([-2.0, 2.0])))  # top left
    assert torch.allclose(imgs[4, 4], m.decode(torch.tensor([2.0, -2.0])))  # bottom right
    assert torch.allclose(imgs[2, 2], m.decode(torch.zeros(2)))


def test_grid_functions_reject_deep_or_mismatched_models():
    m = IWAE(20, [(8, 2), (4, 2)])
    x = torch.zeros(1, 20)
    with pytest.raises(ValueError, match="one stochastic layer"):
        latent.posterior_grid(m, x, latent.grid_2d(1.0, 5))
    with pytest.raises(ValueError, match=r"\[G, 3\]"):
        latent.posterior_grid(IWAE(20, [(8, 3)]), x, latent.grid_2d(1.0, 5))


def test_reconstruction_metrics():
    torch.manual_seed(4)
    m = IWAE(20, [(8, 3)])
    xg = torch.rand(6, 20)
    xb = torch.bernoulli(xg)
    r = latent.reconstruction_metrics(m, xg, xb, n_samples=4, batch_size=4)
    mean = m.encode(xb)[0][0]
    assert torch.allclose(r.log_lik_mean.float(), m.log_px_given_h(xb, mean[None])[0])
    assert torch.allclose(r.pixel_error.float(), (m.decode(mean) - xg).abs().mean(-1))
    assert r.log_lik_sampled.shape == (6,) and set(r.summary()) == {
        "log_lik_mean", "log_lik_sampled", "pixel_error"}


def _stored_iwae_k50(root):
    """A small model stored as ``root/a.pt`` with metadata (an IWAE, k = 50, 7 epochs)."""
    torch.manual_seed(5)
    m = IWAE(784, [(8, 2)])
    save_checkpoint(root / "a.pt", {"model": m.state_dict(), "model_config": m.config})
    (root / "a.json").write_text(json.dumps({"dataset": "mnist", "objective": "iwae", "k": 50,
                                             "layers": [[8, 2]], "epochs": 7}))
    return m


def test_checkpoints_are_found_by_configuration(tmp_path, monkeypatch):
    monkeypatch.delenv("IWAE_CHECKPOINT_DIR", raising=False)
    from iwae_tutorial.runs import RunConfig

    root = tmp_path / "ckpt"
    m = _stored_iwae_k50(root)
    run = root / "run"  # the layout of a run directory written by train_run
    save_checkpoint(run / "checkpoint.pt", {"model": m.state_dict(), "model_config": m.config})
    (run / "config.json").write_text(json.dumps({"dataset": "mnist", "objective": "vae",
                                                 "k": 1, "layers": [[8, 2]]}))
    assert runs.find_trained("mnist", "iwae", 5, [[8, 2]], root) is None
    path, meta = runs.find_trained("mnist", "iwae", 50, [(8, 2)], root)
    assert path.name == "a.pt" and meta["epochs"] == 7
    assert runs.find_trained("mnist", "vae", 1, [[8, 2]], root)[0].parent.name == "run"
    cfg = RunConfig(objective="iwae", k=50, layers=[[8, 2]], epochs=1)
    loaded, info = runs.load_or_train(cfg, device="cpu", root=root)
    assert info["source"].startswith("checkpoint") and info["epochs"] == 7
    text = runs.describe_source(info)
    assert text.splitlines()[0] == info["source"] and "epochs: 7" in text
    for a, b in zip(loaded.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)


def test_plots_draw():
    import matplotlib.pyplot as plt

    from iwae_tutorial.plots import latent as pl

    assert pl.tile_images(torch.rand(5, 784), ncol=3, pad=1).shape == (2 * 29 + 1, 3 * 29 + 1)
    assert pl.tile_images(torch.rand(2, 4, 784), pad=0).shape == (56, 112)
    torch.manual_seed(6)
    m = IWAE(784, [(8, 2)])
    x = torch.bernoulli(torch.full((3, 784), 0.2))
    grid = latent.grid_2d(4.0, 41)
    pl.plot_posterior_vs_q(grid, latent.posterior_grid(m, x, grid)[0],
                           latent.q_density_grid(m, x, grid)[0])
    pl.plot_latent_scatter(torch.randn(30, 2), torch.arange(30) % 10)
    pl.plot_manifold(latent.decode_grid(m, 4, 2.0), 2.0)
    pl.plot_image_rows({"a": torch.rand(4, 784), "b": torch.rand(4, 784)})
    w = pl.z_picker(m, torch.randn(10, 2), torch.arange(10), span=2.0)
    assert len(w.children) >= 2
    plt.close("all")


def test_neighbour_agreement():
    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    assert latent.neighbour_agreement(z, torch.tensor([0, 0, 1, 1])) == 1.0
    assert latent.neighbour_agreement(z, torch.tensor([0, 1, 0, 1])) == 0.0


def test_q_width_is_the_geometric_mean_std():
    torch.manual_seed(7)
    m = IWAE(20, [(8, 3)])
    x = torch.bernoulli(torch.full((5, 20), 0.5))
    std = m.encode(x)[0][1]
    assert math.isclose(latent.q_width(m, x), float(std.log().mean().exp()), rel_tol=1e-5)
    mask = torch.tensor([True, False, True])
    assert math.isclose(latent.q_width(m, x, mask, batch_size=2),
                        float(std[:, mask].log().mean().exp()), rel_tol=1e-5)


def test_traverse_unit_moves_one_unit_of_the_code():
    torch.manual_seed(0)
    m = IWAE(784, [(20, 6)])
    x = torch.bernoulli(torch.full((784,), 0.3))
    values = torch.linspace(-2, 2, 5)
    out = latent.traverse_unit(m, x, 3, values)
    assert out.shape == (5, 784) and ((out > 0) & (out < 1)).all()
    h = latent.encode_means(m, x[None])[0]
    codes = h.repeat(5, 1)
    codes[:, 3] = values
    assert torch.allclose(out, m.decode(codes))
    with torch.no_grad():  # a unit the decoder ignores changes nothing
        m.decoder[-1].body[0].weight[:, 3] = 0.0
    flat = latent.traverse_unit(m, x, 3, values)
    assert torch.allclose(flat, flat[:1].expand_as(flat))
    with pytest.raises(ValueError, match="unit 6"):
        latent.traverse_unit(m, x, 6, values)


def test_a_loaded_model_says_when_its_epochs_are_not_the_configurations(tmp_path):
    """What a cell says is what runs: a configuration of 1 epoch that loads a 7-epoch model
    says so in the source line the chapters print."""
    from iwae_tutorial.runs import RunConfig

    root = tmp_path / "ckpt"
    _stored_iwae_k50(root)
    for asked, note in ((1, True), (7, False)):
        cfg = RunConfig(objective="iwae", k=50, layers=[[8, 2]], epochs=asked)
        _, info = runs.load_or_train(cfg, device="cpu", root=root)
        assert ("trained for 7 epochs (not the 1 this configuration would train here)"
                in info["source"]) is note, info["source"]
