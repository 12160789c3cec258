"""fleet/graphs.py: the warm-up before a CUDA graph's capture leaves no trace. The snapshot is
what undoes it, and it is tested here on the CPU (the side stream itself needs a GPU)."""

from __future__ import annotations

import pytest
import torch

from iwae_tutorial.fleet.graphs import Snapshot, warm_up


def adam_steps(params, opt, n):
    for _ in range(n):
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()


def state_of(opt, params):
    return [{k: v.clone() for k, v in opt.state[p].items()} for p in params]


@pytest.mark.parametrize("resumed", [False, True])
def test_the_snapshot_undoes_steps_parameters_buffers_and_adam_moments(resumed):
    torch.manual_seed(0)
    params = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    buffer = torch.zeros(2)
    opt = torch.optim.Adam(params, lr=0.1)
    if resumed:  # a run that already has moments keeps exactly those
        adam_steps(params, opt, 2)
    before = [p.detach().clone() for p in params]
    moments = state_of(opt, params) if resumed else None
    snap = Snapshot(params + [buffer], opt, params)
    adam_steps(params, opt, 3)  # the warm-up
    buffer.add_(7.0)
    assert not torch.equal(params[0], before[0])
    snap.restore()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert torch.equal(buffer, torch.zeros(2))
    after = state_of(opt, params)
    if resumed:
        assert all(torch.equal(a[k], m[k]) for a, m in zip(after, moments) for k in m)
    else:  # moments the optimizer did not have before: zero, as a fresh Adam's
        assert all(float(v.abs().sum()) == 0 for a in after for v in a.values())


def test_the_snapshot_copes_with_an_optimizer_without_state():
    p = torch.ones(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5)
    snap = Snapshot([p], opt, [p])
    adam_steps([p], opt, 1)
    snap.restore()
    assert torch.equal(p, torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs a GPU")
def test_warm_up_on_a_side_stream_changes_nothing():
    p = torch.ones(4, device="cuda", requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1)
    warm_up(lambda: adam_steps([p], opt, 1), 2, [p], opt, [p])
    assert torch.equal(p, torch.ones(4, device="cuda"))
