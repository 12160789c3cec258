"""Training: the paper's schedule, exact resumption, atomic checkpoints, divergence, mismatches.

Everything runs on a small model and 200 random grey images (no data files needed), batch 20,
so 10 steps per epoch.
"""

import hashlib
import json
import math

import pytest
import torch
from helpers import grey, seeded_model

from iwae_tutorial import objectives
from iwae_tutorial.models import IWAE
from iwae_tutorial.objectives import OBJECTIVES, iwae_objective
from iwae_tutorial.schedule import Stage, burda_schedule, schedule_epochs, truncate_schedule
from iwae_tutorial.train import (
    CHECKPOINT_NAME,
    TrainingDivergedError,
    fit,
    load_checkpoint,
)

N, BATCH, K = 200, 20, 3
STEPS = N // BATCH


def grey_images(seed: int = 0) -> torch.Tensor:
    return grey(N, seed=seed)


def small_model(seed: int) -> IWAE:
    return seeded_model([(32, 8)], seed)


def fit_small(model, run_dir=None, epochs=2, objective="iwae", k=K, **kw):
    return fit(model, grey_images(), objective=objective, k=k, epochs=epochs,
               batch_size=BATCH, seed=0, run_dir=run_dir, progress=False, **kw)


def assert_same_params(a: IWAE, b: IWAE) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def file_digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ schedule
def test_burda_schedule_is_the_papers():
    s = burda_schedule()
    assert len(s) == 8
    assert [st.epochs for st in s] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert schedule_epochs(s) == 3280
    for i, st in enumerate(s):
        assert math.isclose(st.lr, 1e-3 * 10 ** (-i / 7), rel_tol=1e-12)
    assert math.isclose(s[0].lr, 1e-3) and math.isclose(s[7].lr, 1e-4)


@pytest.mark.parametrize("epochs, expected", [
    (1, [(1, 0)]),
    (2, [(1, 0), (1, 1)]),
    (4, [(1, 0), (3, 1)]),
    (5, [(1, 0), (3, 1), (1, 2)]),
    (13, [(1, 0), (3, 1), (9, 2)]),
    (14, [(1, 0), (3, 1), (9, 2), (1, 3)]),
])
def test_truncate_schedule_keeps_the_learning_rates(epochs, expected):
    full = burda_schedule()
    s = truncate_schedule(full, epochs)
    assert schedule_epochs(s) == epochs
    assert s == [Stage(n, full[i].lr) for n, i in expected]


def test_truncate_schedule_full_and_longer():
    full = burda_schedule()
    assert truncate_schedule(full, 3280) == full
    longer = truncate_schedule(full, 3300)
    assert schedule_epochs(longer) == 3300
    assert longer[:8] == full and longer[8] == Stage(20, full[-1].lr)
    with pytest.raises(ValueError):
        truncate_schedule(full, 0)


# ------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def uninterrupted():
    """Two epochs (lr 1e-3 then 1e-3 * 10^(-1/7)) without a run directory."""
    model = small_model(seed=0)
    history = fit_small(model)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["lr"] == burda_schedule()[1].lr
    return model, history


def test_resume_after_epoch_1_matches_uninterrupted(tmp_path, uninterrupted):
    ref_model, ref_history = uninterrupted
    first = small_model(seed=0)
    fit_small(first, run_dir=tmp_path, epochs=1)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert not any(torch.equal(p, q) for p, q in zip(first.parameters(),
                                                       ref_model.parameters()))

    # a new process: a new model object with other initial weights, resumed from the checkpoint
    resumed = small_model(seed=123)
    history = fit_small(resumed, run_dir=tmp_path, epochs=2)
    assert_same_params(resumed, ref_model)
    assert without_seconds(history) == without_seconds(ref_history)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]


def test_kill_mid_epoch_then_resume(tmp_path, monkeypatch, uninterrupted):
    """KeyboardInterrupt in the 5th step of epoch 2: the checkpoint on disk is epoch 1's,
    untouched, no temporary file is left, and resuming reproduces the uninterrupted run."""
    ref_model, ref_history = uninterrupted
    calls = {"n": 0, "kill_at": STEPS + 5}

    def killable(model, x, k, **kw):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise KeyboardInterrupt
        return iwae_objective(model, x, k, **kw)

    monkeypatch.setitem(OBJECTIVES, "test-killable", killable)
    digests = []

    def after_epoch(entry):
        digests.append(file_digest(tmp_path / CHECKPOINT_NAME))

    with pytest.raises(KeyboardInterrupt):
        fit_small(small_model(seed=0), run_dir=tmp_path, objective="test-killable",
                  callback=after_epoch)
    assert calls["n"] == STEPS + 5 and len(digests) == 1
    assert file_digest(tmp_path / CHECKPOINT_NAME) == digests[0]
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", CHECKPOINT_NAME, "log.jsonl"]

    calls["kill_at"] = -1
    resumed = small_model(seed=7)
    history = fit_small(resumed, run_dir=tmp_path, objective="test-killable")
    assert calls["n"] == STEPS + 5 + STEPS  # epoch 2 was redone from its start
    assert_same_params(resumed, ref_model)
    assert without_seconds(history) == without_seconds(ref_history)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_finished_run_is_not_retrained(tmp_path):
    model = small_model(seed=0)
    history = fit_small(model, run_dir=tmp_path, epochs=1)
    digest = file_digest(tmp_path / CHECKPOINT_NAME)
    again = small_model(seed=5)
    assert without_seconds(fit_small(again, run_dir=tmp_path, epochs=1)) == \
        without_seconds(history)
    assert_same_params(again, model)
    assert file_digest(tmp_path / CHECKPOINT_NAME) == digest


# ------------------------------------------------------------------------------ divergence
def test_nan_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}

    def nan_at_step_3_of_epoch_2(model, x, k, **kw):
        calls["n"] += 1
        surrogate, bound = iwae_objective(model, x, k, **kw)
        if calls["n"] == STEPS + 3:
            surrogate = surrogate + float("nan")
        return surrogate, bound

    monkeypatch.setitem(OBJECTIVES, "test-nan", nan_at_step_3_of_epoch_2)
    digests = []
    with pytest.raises(TrainingDivergedError) as err:
        fit_small(small_model(seed=0), run_dir=tmp_path, objective="test-nan",
                  callback=lambda e: digests.append(file_digest(tmp_path / CHECKPOINT_NAME)))
    msg = str(err.value)
    assert "epoch 2, step 3 of 10" in msg and f"global step {STEPS + 3}" in msg, msg
    assert "nan" in msg.lower() and str(tmp_path / CHECKPOINT_NAME) in msg
    assert len(digests) == 1 and file_digest(tmp_path / CHECKPOINT_NAME) == digests[0]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    model = small_model(seed=1)
    model.load_state_dict(state["model"])  # loadable and finite
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not list(tmp_path.glob("*.tmp"))


def test_nan_weights_diverge_at_the_first_step(tmp_path):
    model = small_model(seed=0)
    with torch.no_grad():
        model.decoder[-1].logits.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1 of 10 .*no checkpoint"):
        fit_small(model, run_dir=tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


# ------------------------------------------------------------------------------ mismatches
@pytest.mark.parametrize("change", [{"k": K + 1}, {"objective": "vae"}, {"seed": 1},
                                    {"batch_size": 10}])
def test_checkpoint_of_another_configuration_is_refused(tmp_path, change):
    fit_small(small_model(seed=0), run_dir=tmp_path, epochs=1)
    digest = file_digest(tmp_path / CHECKPOINT_NAME)
    kw = {"objective": "iwae", "k": K, "seed": 0, "batch_size": BATCH, **change}
    with pytest.raises(ValueError, match="another configuration"):
        fit(small_model(seed=0), grey_images(), epochs=2, run_dir=tmp_path, progress=False,
            **kw)
    assert file_digest(tmp_path / CHECKPOINT_NAME) == digest


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    fit_small(small_model(seed=0), run_dir=tmp_path, epochs=1)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="another model"):
        fit_small(IWAE(784, [(16, 8)]), run_dir=tmp_path, epochs=2)


def test_resume_false_starts_afresh(tmp_path, uninterrupted):
    fit_small(small_model(seed=0), run_dir=tmp_path, epochs=1, k=K + 1)
    model = small_model(seed=0)
    history = fit_small(model, run_dir=tmp_path, resume=False)
    assert_same_params(model, uninterrupted[0])
    assert without_seconds(history) == without_seconds(uninterrupted[1])


def test_unknown_objective_fails_fast():
    with pytest.raises(ValueError, match="unknown objective"):
        fit_small(small_model(seed=0), objective="no-such-objective")
    assert "no-such-objective" not in objectives.OBJECTIVES


def test_run_config_constant_learning_rate():
    from iwae_tutorial.runs import RunConfig

    assert RunConfig(epochs=3).schedule() == truncate_schedule(burda_schedule(), 3)
    assert RunConfig(epochs=3, lr=2e-3).schedule() == [Stage(3, 2e-3)]
    assert RunConfig().schedule() == burda_schedule()
    with pytest.raises(ValueError, match="needs a number of epochs"):
        RunConfig(lr=2e-3)
    with pytest.raises(ValueError, match="positive"):
        RunConfig(epochs=1, lr=-1.0)
