import math

import pytest
import torch

from iwae_tutorial.models import IWAE, bernoulli_output_bias, gaussian_log_prob
from iwae_tutorial.objectives import loss


def test_paper_architectures_shapes():
    one = IWAE(784, [(200, 200, 50)])
    two = IWAE(784, [(200, 200, 100), (100, 100, 50)])
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    assert one.log_weights(x, 5).shape == (5, 4)
    assert two.log_weights(x, 3).shape == (3, 4)
    assert [m.shape for m, _ in two.encode(x)] == [(4, 100), (4, 50)]
    assert two.sample(6).shape == (6, 784)
    assert two.reconstruct(x).shape == (4, 784)
    # the generative network mirrors the recognition network
    sizes = [p.shape for p in two.decoder[0].body.parameters()]
    assert sizes[0] == (100, 50)
    assert one.decoder[-1].logits.weight.shape == (784, 200)


def test_parameter_count_of_the_one_layer_model():
    m = IWAE(784, [(200, 200, 50)])
    enc = 784 * 200 + 200 + 200 * 200 + 200 + 2 * (200 * 50 + 50)
    dec = 50 * 200 + 200 + 200 * 200 + 200 + 200 * 784 + 784
    assert sum(p.numel() for p in m.parameters()) == enc + dec


def test_glorot_init_zero_biases_and_output_bias():
    torch.manual_seed(0)
    x = torch.rand(100, 784) * 0.5
    bias = bernoulli_output_bias(x)
    m = IWAE(784, [(200, 200, 50)], output_bias=bias)
    w = m.encoder[0].body[0].weight
    bound = math.sqrt(6 / (784 + 200))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(m.encoder[0].body[0].bias == 0)
    assert torch.allclose(m.decoder[-1].logits.bias, bias)
    # clipped to [0.001, 0.999]
    assert torch.allclose(bernoulli_output_bias(torch.zeros(3, 2)),
                          torch.logit(torch.tensor(0.001)).expand(2))


def test_gaussian_log_prob_matches_torch_distributions():
    h, mean, log_std = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5) * 0.3
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(h).sum(-1)
    assert torch.allclose(gaussian_log_prob(h, mean, log_std), ref, atol=1e-5)


def test_log_weights_is_log_joint_minus_log_q():
    torch.manual_seed(1)
    m = IWAE(10, [(8, 4), (3,)]).double()
    x = torch.bernoulli(torch.full((2, 10), 0.5, dtype=torch.float64))
    eps = [torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)]
    hs, log_q = m.sample_q(x, 3, eps=eps)
    # recompute by hand with torch.distributions
    N = torch.distributions.Normal
    mu1, ls1 = m.encoder[0](x)
    mu2, ls2 = m.encoder[1](hs[0])
    lq = N(mu1, ls1.exp()).log_prob(hs[0]).sum(-1) + N(mu2, ls2.exp()).log_prob(hs[1]).sum(-1)
    pm, pls = m.decoder[0](hs[1])
    logits = m.decoder[1](hs[0])
    lp = (N(0.0, 1.0).log_prob(hs[1]).sum(-1) + N(pm, pls.exp()).log_prob(hs[0]).sum(-1)
          + torch.distributions.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1))
    assert torch.allclose(log_q, lq)
    assert torch.allclose(m.log_weights(x, 3, eps=eps), lp - lq)


def test_generator_makes_log_weights_reproducible():
    m = IWAE(20, [(10, 5)])
    x = torch.rand(4, 20).bernoulli()
    a = m.log_weights(x, 3, generator=torch.Generator().manual_seed(5))
    b = m.log_weights(x, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_bad_input_errors_are_clear():
    m = IWAE(784, [(20, 5)])
    with pytest.raises(ValueError, match=r"\[batch, 784\]"):
        m.log_weights(torch.zeros(2, 28, 28), 1)
    with pytest.raises(ValueError, match="positive number of samples"):
        m.log_weights(torch.zeros(2, 784), 0)
    with pytest.raises(ValueError, match="stochastic layer"):
        IWAE(784, [])
    with pytest.raises(ValueError, match="likelihood"):
        IWAE(784, [(5,)], likelihood="poisson")
    with pytest.raises(ValueError, match="unknown objective"):
        loss(m, torch.zeros(2, 784), 1, "nope")
