"""Every (seed, purpose) pair has its own random stream (no two seeds or purposes share one)."""

import pytest
import torch

from iwae_tutorial.runs import RunConfig, build_model
from iwae_tutorial.seeding import PURPOSES, stream_seed
from iwae_tutorial.train import make_generators


def test_no_two_seeds_or_purposes_share_a_stream():
    seeds = {stream_seed(s, p) for s in range(2000) for p in PURPOSES}
    assert len(seeds) == 2000 * len(PURPOSES)
    assert all(0 <= v < 2**63 for v in seeds)
    assert not seeds & set(range(2000))  # none is a small integer (the evaluation's seeds)


def test_neighbouring_seeds_draw_different_numbers_in_every_role():
    """Seed 0's noise was seed 1's binarization when the streams were s, s + 1, s + 2."""
    draws = {}
    for seed in (0, 1, 2):
        for purpose, g in make_generators(seed, "cpu").items():
            draws[(seed, purpose)] = torch.rand(8, generator=g)
    keys = list(draws)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not torch.equal(draws[a], draws[b]), (a, b)


def test_the_streams_are_fixed_by_the_seed():
    a, b = make_generators(3, "cpu"), make_generators(3, "cpu")
    for name in a:
        assert torch.equal(torch.rand(4, generator=a[name]), torch.rand(4, generator=b[name]))
    assert stream_seed(0, "noise") == stream_seed(0, "noise")


def test_the_weights_have_their_own_stream():
    """Initial weights come from (seed, "weights"): seed 1's are not seed 0's, and neither is
    what a bare torch.manual_seed(seed) gives."""
    from helpers import tiny_dataset

    ds = tiny_dataset()

    def first_weight(seed):
        cfg = RunConfig(dataset="mnist", objective="vae", k=1, layers=[[20, 4]], seed=seed)
        return next(build_model(cfg, ds).parameters()).detach().clone()

    w0, w1 = first_weight(0), first_weight(1)
    assert not torch.equal(w0, w1) and torch.equal(w0, first_weight(0))
    torch.manual_seed(0)
    bare = torch.nn.Linear(784, 20).weight.detach()
    assert bare.shape == w0.shape and not torch.equal(bare, w0)


def test_an_unknown_purpose_is_an_error():
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(0, "nosie")
