"""The fleet's fast path (counter-based noise, on-device data order, blocks of steps): what it
must keep. Run on the CPU, where the blocks run eagerly (the CUDA graph replays the same steps).
"""

import os

import pytest
import torch
from helpers import grey, seeded_model, tiny_dataset

from iwae_tutorial import noise
from iwae_tutorial.checkpoints import SHARD_BYTES
from iwae_tutorial.evaluate import log_likelihood_many
from iwae_tutorial.fast import STATE_DIR, _block_size, fit_fast
from iwae_tutorial.fleet import Fleet, FleetMember, table1_configs

N, BATCH, DIM = 60, 20, 40
ONE = [(24, 6)]
TWO = [(24, 12), (10, 5)]


def fleet_of(specs, dtype=torch.float64):
    """specs: (objective, k, layers, seed); each model initialised by its seed."""
    models = [seeded_model(layers, seed, DIM, dtype) for _, _, layers, seed in specs]
    members = [FleetMember(o, k, s, f"m{i}-{o}-k{k}-s{s}")
               for i, (o, k, _, s) in enumerate(specs)]
    return Fleet(models, members)


def params_of(fleet, i):
    return fleet.state_dict_of(i)


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------ the noise
def test_noise_moments_and_independence():
    seeds = noise.seed_tensor([0, 1, 2**40 + 3])
    z = noise.normal(seeds, "noise", 7, (200_000,))
    assert z.shape == (3, 200_000)
    assert z.mean(1).abs().max() < 0.01 and (z.var(1) - 1).abs().max() < 0.01
    assert torch.corrcoef(z).triu(1).abs().max() < 0.01  # seeds: independent streams
    z8 = noise.normal(seeds, "noise", 8, (200_000,))
    assert torch.corrcoef(torch.stack([z[0], z8[0]]))[0, 1].abs() < 0.01  # steps too
    u = noise.uniform(seeds, "binarize", 7, (200_000,))
    assert 0 < float(u.min()) and float(u.max()) < 1 and (u.mean(1) - 0.5).abs().max() < 0.005
    assert torch.corrcoef(torch.stack([u[0], noise.uniform(seeds, "order", 7, (200_000,))[0]])
                          )[0, 1].abs() < 0.01  # purposes too
    # a pure function of (seed, purpose, counter): same inputs, same numbers, any batch
    assert torch.equal(noise.normal(seeds[1:2], "noise", 7, (200_000,))[0], z[1])
    assert torch.equal(noise.normal(seeds, "noise", torch.tensor(7), (200_000,)), z)
    p = noise.permutation(seeds, 3, 1000)
    assert torch.equal(p.sort(1).values, torch.arange(1000).expand(3, -1))
    b = noise.bernoulli(torch.full((3, 100_000), 0.3), seeds, 1)
    assert set(b.unique().tolist()) == {0.0, 1.0} and abs(float(b.mean()) - 0.3) < 0.005


def test_block_size_divides_the_epoch():
    assert _block_size(2980, 20) == 20 and _block_size(2980, 50) == 20
    assert _block_size(7, 20) == 7 and _block_size(3, 2) == 1


# ------------------------------------------------------------------ what a member keeps
def test_a_member_equals_itself_trained_alone():
    """Its objective, k, seed and Adam state are its own: in a fleet of mixed members it ends
    where it ends trained alone by the fast path."""
    x = grey(N, DIM, dtype=torch.float64)
    specs = [("vae", 1, ONE, 0), ("iwae", 5, ONE, 1), ("iwae", 3, TWO, 2), ("vae", 5, ONE, 3)]
    big = fleet_of(specs)
    fit_fast(big, x, epochs=2, batch_size=BATCH, progress=False, block=2)
    for i, spec in enumerate(specs):
        alone = fleet_of([spec])
        fit_fast(alone, x, epochs=2, batch_size=BATCH, progress=False, block=3)
        assert max_diff(params_of(big, i), params_of(alone, 0)) < 1e-9, spec


def test_k1_vae_and_iwae_stay_identical_under_one_seed():
    x = grey(N, DIM)
    f = fleet_of([("vae", 1, ONE, 4), ("iwae", 1, ONE, 4), ("iwae", 1, ONE, 5)],
                 dtype=torch.float32)
    res = fit_fast(f, x, epochs=2, batch_size=BATCH, progress=False)
    a, b, c = (params_of(f, i) for i in range(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res.history[0] == res.history[1]
    assert max_diff(a, c) > 1e-3  # another seed: another run


def test_members_with_different_seeds_draw_different_noise():
    seeds = noise.seed_tensor([0, 1])
    e = noise.normal(seeds, "noise", 0, (5, 20, 6))
    assert not torch.equal(e[0], e[1])
    assert torch.corrcoef(e.flatten(1))[0, 1].abs() < 0.1


def test_resume_equals_uninterrupted(tmp_path):
    x = grey(N, DIM, dtype=torch.float64)
    specs = [("iwae", 5, ONE, 0), ("vae", 3, TWO, 1)]
    ref = fleet_of(specs)
    r_ref = fit_fast(ref, x, epochs=3, batch_size=BATCH, progress=False)
    first = fleet_of(specs)
    r1 = fit_fast(first, x, epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False,
                  max_seconds=0.0)  # stops after epoch 1, state saved
    assert not r1.finished and r1.epochs_done == 1
    again = fleet_of([("iwae", 5, ONE, 7), ("vae", 3, TWO, 8)])  # other initial weights
    again.members = first.members
    again.names = first.names
    r2 = fit_fast(again, x, epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False)
    assert r2.finished
    for i in range(2):
        assert max_diff(params_of(again, i), params_of(ref, i)) == 0.0
    assert [h["train_bound"] for h in r2.history[0]] == [h["train_bound"]
                                                         for h in r_ref.history[0]]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_the_whole_table_state_fits_in_8_files_of_16_mib(tmp_path):
    ds = tiny_dataset()
    fleet = Fleet.from_configs(table1_configs("mnist", epochs=1, n_train=40), ds, "cpu")
    fit_fast(fleet, ds.x_train, epochs=1, batch_size=BATCH, run_dir=tmp_path, progress=False)
    files = list((tmp_path / STATE_DIR).glob("*.pt"))
    assert 2 <= len(files) <= 8
    assert max(os.path.getsize(f) for f in files) <= SHARD_BYTES
    assert sum(os.path.getsize(f) for f in files) > 3 * 16 << 20  # really had to be split


def test_fast_path_reaches_the_exact_paths_nll():
    """A short run of each path, two seeds each: the test NLLs agree within the seeds' spread
    and the evaluation's Monte Carlo error."""
    from iwae_tutorial.data import DataError, load_dataset

    try:
        ds = load_dataset("mnist", download=False)
    except DataError:
        pytest.skip("MNIST not available (set IWAE_DATA_DIR)")
    x, x_test = ds.x_train[:1000], torch.bernoulli(ds.x_test[:200],
                                                   generator=torch.Generator().manual_seed(0))
    specs = [("iwae", 5, [(64, 16)], s) for s in (0, 1)]

    def make():
        models = [seeded_model(layers, seed, 784) for _, _, layers, seed in specs]
        return Fleet(models, [FleetMember(o, k, s, f"{o}{s}") for o, k, _, s in specs])

    exact, fast = make(), make()
    exact.fit(x, epochs=3, batch_size=BATCH, progress=False, handle_signals=False)
    fit_fast(fast, x, epochs=3, batch_size=BATCH, progress=False)
    gens = [torch.Generator().manual_seed(0) for _ in range(4)]
    ll = log_likelihood_many(exact.models() + fast.models(), x_test, 100, generators=gens)
    nll = -ll.mean(1)  # [exact s0, exact s1, fast s0, fast s1]
    d = ll[:2].mean(0) - ll[2:].mean(0)  # per test image: paired, so the images' spread cancels
    se = float(d.std() / d.shape[0] ** 0.5)
    spread = float((nll[0] - nll[1]).abs() + (nll[2] - nll[3]).abs()) / 2  # seed to seed
    gap = float(d.mean())
    assert abs(gap) < 3 * (se + spread) + 0.25, (nll.tolist(), se, spread)


def test_sigterm_stops_at_the_end_of_the_epoch_with_the_state_saved(tmp_path):
    import signal

    x = grey(N, DIM, dtype=torch.float64)
    f = fleet_of([("iwae", 5, ONE, 0)])
    res = fit_fast(f, x, epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False,
                   callback=lambda epoch, last: os.kill(os.getpid(), signal.SIGTERM))
    assert not res.finished and res.epochs_done == 1
    assert (tmp_path / STATE_DIR / "index.pt").exists()
    assert fit_fast(fleet_of([("iwae", 5, ONE, 0)]), x, epochs=3, batch_size=BATCH,
                    run_dir=tmp_path, progress=False).finished
