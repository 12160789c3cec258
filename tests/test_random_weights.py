"""IWAE with random weights (random_weights.py): the plain model at zero variance, gradients to
means and log-stds, IWAERrec's deterministic decoder, a loss that falls, bounded evaluation."""

from __future__ import annotations

import pytest
import torch
from helpers import grey

from iwae_tutorial.evaluate import log_likelihood
from iwae_tutorial.models import IWAE
from iwae_tutorial.objectives import loss
from iwae_tutorial.random_weights import RandomLinear, RandomWeightsIWAE, weight_stds
from iwae_tutorial.train import fit

LAYERS = [(16, 4)]
DIM, B, K = 12, 5, 7


def pair(random: str, init_log_std: float = -6.0):
    """A random-weights model and the plain IWAE with the same initialisation."""
    torch.manual_seed(0)
    plain = IWAE(DIM, LAYERS).double()
    torch.manual_seed(0)
    rnd = RandomWeightsIWAE(DIM, LAYERS, random=random, init_log_std=init_log_std).double()
    return rnd, plain


def data():
    return torch.bernoulli(grey(B, DIM, seed=1, dtype=torch.float64))


def eps(k=K, seed=2):
    return [torch.randn(k, B, 4, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)]


@pytest.mark.parametrize("random", ["none", "recognition", "both"])
def test_with_zero_variance_the_log_weights_are_the_plain_models(random):
    rnd, plain = pair(random, init_log_std=float("-inf"))  # std exp(-inf) = 0
    x = data()
    g = torch.Generator().manual_seed(3)
    assert torch.allclose(rnd.log_weights(x, K, eps=eps(), generator=g),
                          plain.log_weights(x, K, eps=eps()), atol=1e-12)
    # and L_k estimates equal the plain evaluation for the same noise
    a = log_likelihood(rnd, x, 50, chunk_size=20, generator=torch.Generator().manual_seed(4),
                       kernel="reference")
    b = log_likelihood(plain, x, 50, chunk_size=20, generator=torch.Generator().manual_seed(4),
                       kernel="reference")
    if random == "none":
        assert torch.allclose(a, b, atol=1e-10)
    assert a.shape == (B,) and torch.isfinite(a).all()


def test_the_gradient_reaches_means_and_log_stds():
    rnd, _ = pair("both")
    loss(rnd, data(), K).backward()
    names = {n for n, p in rnd.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.endswith("weight_log_std") and n.startswith("encoder") for n in names)
    assert any(n.endswith("weight_log_std") and n.startswith("decoder") for n in names)
    assert any(n.endswith("bias_mean") for n in names)
    n_random = sum(isinstance(m, RandomLinear) for m in rnd.modules())
    assert n_random == 3 + 2  # encoder: hidden, mean, log_std; decoder: hidden, logits


def test_iwaer_rec_leaves_the_decoder_deterministic():
    rnd, _ = pair("recognition")
    assert not any(isinstance(m, RandomLinear) for m in rnd.decoder.modules())
    assert any(isinstance(m, RandomLinear) for m in rnd.encoder.modules())
    x, e = data(), eps()
    # the same latent noise with different weight draws: only the encoder changes, so
    # log p(x | z) differs only through z; with the decoder fixed, decoding is deterministic
    h = torch.randn(K, B, 4, dtype=torch.float64)
    with rnd.weight_draws(K, torch.Generator().manual_seed(0)):
        a = rnd.log_joint(x, [h])
    with rnd.weight_draws(K, torch.Generator().manual_seed(1)):
        b = rnd.log_joint(x, [h])
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    assert not torch.allclose(rnd.log_weights(x, K, eps=e, generator=g1),
                              rnd.log_weights(x, K, eps=e, generator=g2))


def test_each_importance_sample_has_its_own_weights_shared_by_the_batch():
    layer = RandomLinear(torch.nn.Linear(3, 2).double(), init_log_std=0.0)
    layer.draws, layer.generator = 4, torch.Generator().manual_seed(0)
    inp = torch.ones(5, 3, dtype=torch.float64)
    out = layer(inp)  # [4, 5, 2]
    assert out.shape == (4, 5, 2)
    assert torch.allclose(out[:, :1], out)  # the same input: the same draw across the batch
    assert not torch.allclose(out[:1], out)  # different draws across samples


def test_a_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    x = torch.bernoulli(grey(60, DIM, seed=5))
    model = RandomWeightsIWAE(DIM, LAYERS, random="both")
    with torch.no_grad():
        before = loss(model, x, K, generator=torch.Generator().manual_seed(0)).item()
    fit(model, x, objective="iwae", k=K, epochs=10, batch_size=20, progress=False)
    with torch.no_grad():
        after = loss(model, x, K, generator=torch.Generator().manual_seed(0)).item()
    assert after < before - 0.3, (before, after)
    log_stds = torch.cat([m.weight_log_std.detach().flatten() for m in model.random_layers()])
    assert (log_stds != -6.0).float().mean() > 0.9  # the standard deviations are learned
    stds = weight_stds(model)
    assert set(stds) >= {"encoder.0.body.0", "decoder.0.logits"}
    assert all(torch.isfinite(v).all() for v in stds.values())


def test_bad_random_is_one_line():
    with pytest.raises(ValueError, match="random must be one of"):
        RandomWeightsIWAE(DIM, LAYERS, random="decoder")


def test_from_model_copies_a_trained_model():
    _, plain = pair("none")
    for p in plain.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    rnd = RandomWeightsIWAE.from_model(plain, "both", log_std=float("-inf"))
    x = data()
    assert torch.allclose(rnd.log_weights(x, K, eps=eps()), plain.log_weights(x, K, eps=eps()),
                          atol=1e-12)
    noisy = RandomWeightsIWAE.from_model(plain, "recognition", log_std=-2.0)
    assert not torch.allclose(noisy.log_weights(x, K, eps=eps()),
                              plain.log_weights(x, K, eps=eps()))
