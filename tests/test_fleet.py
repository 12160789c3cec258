"""The fleet trainer: a member trained in the fleet equals the same model trained alone by
``train.fit`` (same seed), resumption is exact, and the batched evaluation equals
``evaluate.log_likelihood`` model by model.

Small models and random grey images (no data files needed). float64 checks the math to ~1e-10
(the stacked model is the same function, not an approximation); float32 checks the fast path
(oneDNN matmuls where available, fused layers) to float rounding.
"""

import helpers
import pytest
import torch
from helpers import seeded_model

from iwae_tutorial.evaluate import log_likelihood, log_likelihood_many
from iwae_tutorial.fleet import FLEET_CHECKPOINT, Fleet, FleetMember, table1_configs
from iwae_tutorial.fleet.stacked import (
    StackedSpec,
    onednn_available,
    onednn_faster,
    stack_state_dicts,
    stacked_log_weights,
    unstack_state_dict,
)
from iwae_tutorial.models import IWAE
from iwae_tutorial.runs import RunConfig, load_run
from iwae_tutorial.train import TrainingDivergedError, fit

N, BATCH, DIM = 60, 20, 40
STEPS = N // BATCH
ONE = [(24, 6)]
TWO = [(24, 12), (10, 5)]
#: objective, k, layers, seed: two objectives, three values of k, both depths, two seeds;
#: two members share (layers, k) with different objectives (one stacked group mixing them)
MEMBERS = [("vae", 1, ONE, 0), ("iwae", 5, ONE, 0), ("vae", 5, ONE, 1), ("iwae", 3, TWO, 0),
           ("vae", 3, TWO, 7)]


def grey(n=N, dim=DIM, seed=0, dtype=torch.float32):
    return helpers.grey(n, dim, seed, dtype)


def make_model(layers, seed, dim=DIM, dtype=torch.float32):
    return seeded_model(layers, seed, dim, dtype)


def make_fleet(specs, dim=DIM, dtype=torch.float32, gemm="auto"):
    models = [make_model(layers, seed, dim, dtype) for _, _, layers, seed in specs]
    members = [FleetMember(o, k, s, f"m{i}-{o}-k{k}") for i, (o, k, _, s) in enumerate(specs)]
    return Fleet(models, members, gemm=gemm)


def max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 3e-4)])
def test_member_equals_training_alone(dtype, tol):
    x = grey(dtype=dtype)
    fl = make_fleet(MEMBERS, dtype=dtype)
    res = fl.fit(x, epochs=2, batch_size=BATCH, progress=False)
    assert res.finished and res.epochs_done == 2
    for i, (objective, k, layers, seed) in enumerate(MEMBERS):
        alone = make_model(layers, seed, dtype=dtype)
        hist = fit(alone, x, objective=objective, k=k, epochs=2, batch_size=BATCH, seed=seed,
                   progress=False)
        assert max_param_diff(alone.state_dict(), fl.state_dict_of(i)) < tol, MEMBERS[i]
        for h_alone, h_fleet in zip(hist, res.history[i]):
            assert h_fleet["epoch"] == h_alone["epoch"] and h_fleet["lr"] == h_alone["lr"]
            assert h_fleet["train_bound"] == pytest.approx(h_alone["train_bound"], rel=1e-4)


def test_members_with_options_equal_training_alone():
    """Objectives given by a spec with options: the power bound, CIWAE and MIWAE (whose m * k
    samples put it in a group of its own) train in the fleet exactly as alone."""
    specs = [("power:p=2", 5, ONE, 0), ("ciwae:beta=0.3", 5, ONE, 1), ("miwae:m=2", 3, ONE, 0),
             ("iwae", 6, ONE, 2)]
    x = grey(dtype=torch.float64)
    fl = make_fleet(specs, dtype=torch.float64)
    assert sorted(g.k for g in fl.groups) == [5, 6]  # miwae m=2, k=3 draws 6 samples
    res = fl.fit(x, epochs=1, batch_size=BATCH, progress=False)
    for i, (objective, k, layers, seed) in enumerate(specs):
        alone = make_model(layers, seed, dtype=torch.float64)
        fit(alone, x, objective=objective, k=k, epochs=1, batch_size=BATCH, seed=seed,
            progress=False)
        assert max_param_diff(alone.state_dict(), fl.state_dict_of(i)) < 1e-9, specs[i]
    assert res.finished


def test_paper_sized_members_equal_training_alone():
    """The paper's architectures with k = 50 (the oneDNN/bmm fast path on float32), 3 steps."""
    x = grey(dim=784)
    specs = [("iwae", 50, [(200, 200, 50)], 0), ("vae", 50, [(200, 200, 50)], 3),
             ("iwae", 5, [(200, 200, 100), (100, 100, 50)], 1)]
    # "auto" takes oneDNN where it is there and faster on this CPU; the oneDNN path is tested
    # explicitly wherever it is there
    assert make_fleet(specs, dim=784).gemm == (
        "onednn" if onednn_available() and onednn_faster() else "bmm")
    fl = make_fleet(specs, dim=784, gemm="onednn" if onednn_available() else "bmm")
    fl.fit(x, epochs=1, batch_size=BATCH, progress=False)
    for i, (objective, k, layers, seed) in enumerate(specs):
        alone = make_model(layers, seed, dim=784)
        fit(alone, x, objective=objective, k=k, epochs=1, batch_size=BATCH, seed=seed,
            progress=False)
        assert max_param_diff(alone.state_dict(), fl.state_dict_of(i)) < 2e-4, specs[i]


@pytest.mark.parametrize("layers", [ONE, TWO])
@pytest.mark.parametrize("gemm", ["bmm", "onednn"])
def test_stacked_log_weights_and_gradients_equal_the_model(layers, gemm):
    if gemm == "onednn" and not onednn_available():
        pytest.skip("oneDNN matmul not available in this PyTorch build")
    dtype = torch.float64 if gemm == "bmm" else torch.float32
    tol = 1e-10 if gemm == "bmm" else 2e-3
    models = [make_model(layers, s, dtype=dtype) for s in (0, 1)]
    spec = StackedSpec.of(models[0])
    k, b = 64, 40  # 2560 rows: big enough for oneDNN's threshold on the larger layers
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(grey(b, dtype=dtype), generator=g)
    xs = torch.stack([x, x.flip(0)])
    eps = [torch.randn(2, k, b, d, generator=g, dtype=dtype) for d in models[0].latent_dims]
    p = {n: t.requires_grad_(True)
         for n, t in stack_state_dicts([m.state_dict() for m in models], spec).items()}
    lw = stacked_log_weights(p, spec, xs, eps, gemm=gemm)
    lw.logsumexp(1).sum().backward()
    grads = {n: t.grad for n, t in p.items()}
    for j, m in enumerate(models):
        ref = m.log_weights(xs[j], k, eps=[e[j] for e in eps]).detach()
        assert torch.allclose(lw[j], ref, rtol=0, atol=tol * float(ref.abs().max()))
        m.log_weights(xs[j], k, eps=[e[j] for e in eps]).logsumexp(0).sum().backward()
        got = unstack_state_dict(grads, j, spec)
        for n, t in m.named_parameters():
            assert torch.allclose(got[n], t.grad, rtol=0, atol=tol * float(t.grad.abs().max())), n


def test_resume_mid_epoch_is_exact(tmp_path):
    x = grey()
    straight = make_fleet(MEMBERS)
    straight.fit(x, epochs=2, batch_size=BATCH, progress=False)

    pieces = make_fleet(MEMBERS)
    r1 = pieces.fit(x, epochs=2, batch_size=BATCH, run_dir=tmp_path, progress=False,
                    _stop_after_steps=STEPS + 1)  # stops in the middle of epoch 2
    assert not r1.finished and r1.epochs_done == 1
    assert (tmp_path / FLEET_CHECKPOINT).exists()
    resumed = make_fleet(MEMBERS)  # a fresh process would start from a fresh init
    r2 = resumed.fit(x, epochs=2, batch_size=BATCH, run_dir=tmp_path, progress=False)
    assert r2.finished
    for i in range(len(MEMBERS)):
        a, b = straight.state_dict_of(i), resumed.state_dict_of(i)
        assert all(torch.equal(a[n], b[n]) for n in a), i
    assert [len(h) for h in r2.history] == [2] * len(MEMBERS)


def test_time_limit_stops_and_resumes(tmp_path):
    x = grey()
    fl = make_fleet(MEMBERS[:2])
    r = fl.fit(x, epochs=1, batch_size=BATCH, run_dir=tmp_path, max_seconds=0, progress=False)
    assert not r.finished
    r = make_fleet(MEMBERS[:2]).fit(x, epochs=1, batch_size=BATCH, run_dir=tmp_path,
                                    progress=False)
    assert r.finished and r.epochs_done == 1


def test_checkpoint_of_another_fleet_is_refused(tmp_path):
    x = grey()
    make_fleet(MEMBERS[:2]).fit(x, epochs=1, batch_size=BATCH, run_dir=tmp_path,
                                progress=False)
    with pytest.raises(ValueError, match="another fleet"):
        make_fleet(MEMBERS[1:3]).fit(x, epochs=1, batch_size=BATCH, run_dir=tmp_path,
                                     progress=False)


def test_divergence_names_the_member():
    x = grey()
    x[7, 3] = float("nan")
    fl = make_fleet(MEMBERS[:2])
    with pytest.raises(TrainingDivergedError, match="member 'm"):
        fl.fit(x, epochs=1, batch_size=BATCH, binarize=False, progress=False)


def test_members_export_as_plain_models(tmp_path):
    x = grey()
    cfgs = [RunConfig(dataset="mnist", objective=o, k=k, layers=[list(s) for s in layers],
                      epochs=1, seed=s) for o, k, layers, s in MEMBERS]
    fl = make_fleet(MEMBERS)
    # before training, the stacked weights are exactly the models' initialisation
    for i, (_, _, layers, seed) in enumerate(MEMBERS):
        ref = make_model(layers, seed).state_dict()
        got = fl.model(i).state_dict()
        assert all(torch.equal(ref[n], got[n]) for n in ref)
    res = fl.fit(x, epochs=1, batch_size=BATCH, progress=False)
    fl.save_members(tmp_path, cfgs, res.history)
    assert (tmp_path / "fleet.json").exists()
    model, cfg, history = load_run(tmp_path / fl.names[3])
    assert cfg == cfgs[3] and len(history) == 1
    ref = fl.state_dict_of(3)
    assert all(torch.equal(ref[n], model.state_dict()[n]) for n in ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_likelihood_many_equals_evaluate_one_by_one(dtype):
    models = [make_model(layers, seed, dtype=dtype) for _, _, layers, seed in MEMBERS]
    x = torch.bernoulli(grey(30, dtype=dtype), generator=torch.Generator().manual_seed(1))
    k, bs, chunk = 40, 8, 15
    got = log_likelihood_many(models, x, k, batch_size=bs, chunk_size=chunk,
                              generators=[torch.Generator().manual_seed(i)
                                          for i in range(len(models))])
    assert got.shape == (len(models), 30) and got.dtype == torch.float64
    for i, m in enumerate(models):
        ref = log_likelihood(m, x, k, batch_size=bs, chunk_size=chunk, kernel="reference",
                             generator=torch.Generator().manual_seed(i))
        tol = 1e-9 if dtype == torch.float64 else 1e-3
        assert torch.allclose(got[i], ref, rtol=0, atol=tol), i


def test_log_likelihood_many_streams_a_range():
    models = [make_model(ONE, 0), make_model(TWO, 1)]
    x = torch.bernoulli(grey(12))
    part = log_likelihood_many(models, x, 10, batch_size=5, start=5, stop=9)
    assert torch.isnan(part[:, :5]).all() and torch.isnan(part[:, 9:]).all()
    assert torch.isfinite(part[:, 5:9]).all()


def test_table1_configs():
    cfgs = table1_configs("mnist", epochs=2)
    assert len(cfgs) == 12 and len({c.name for c in cfgs}) == 12
    assert {(c.objective, c.k, len(c.layers)) for c in cfgs} == {
        (o, k, n) for o in ("vae", "iwae") for k in (1, 5, 50) for n in (1, 2)}


def test_bad_member_is_refused():
    for estimator in ("dreg", "stl", "piwae:m=2"):  # they change the gradient's path
        with pytest.raises(ValueError, match="not a function of the log-weights alone"):
            FleetMember(estimator, 5, 0)
    with pytest.raises(ValueError, match="power takes"):
        FleetMember("power:q=2", 5, 0)
    with pytest.raises(ValueError, match="one FleetMember per model"):
        Fleet([make_model(ONE, 0)], [])


@pytest.mark.parametrize("d", [784, 101, 37, 1])
def test_softplus_sum(d):
    from iwae_tutorial.fleet.stacked import _softplus_sum

    logits = 12 * torch.randn(3, 50, d, generator=torch.Generator().manual_seed(d),
                              dtype=torch.float64)
    ref = torch.nn.functional.softplus(logits, threshold=100).sum(-1)
    assert torch.allclose(_softplus_sum(logits), ref, rtol=1e-12, atol=1e-10)


def test_gaussian_likelihood_member_equals_training_alone():
    """Real-valued data (the camel chapter's kind of model): Gaussian output layer."""
    x = torch.randn(60, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def model(seed):
        torch.manual_seed(seed)
        return IWAE(2, [(5, 5, 1)], likelihood="gaussian").double()

    fl = Fleet([model(0), model(1)], [FleetMember("iwae", 4, 0, "a"), FleetMember("vae", 4, 1,
                                                                                   "b")])
    fl.fit(x, epochs=2, batch_size=BATCH, binarize=False, progress=False)
    for i, (objective, seed) in enumerate([("iwae", 0), ("vae", 1)]):
        alone = model(seed)
        fit(alone, x, objective=objective, k=4, epochs=2, batch_size=BATCH, seed=seed,
            binarize=False, progress=False)
        assert max_param_diff(alone.state_dict(), fl.state_dict_of(i)) < 1e-9
