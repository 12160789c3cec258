"""Faults, second round (issue 20): nothing of the user's overwritten or deleted, no failure
reported as success, and the README's one line with status 2 for every case.

Classes: symbolic links and foreign folders; the fast trainer's state; result files of other
settings; NaN scores; the checkpoint as the truth about the model; resume exactness whatever
the automatic kernel choice; tampered checkpoints and configurations; full disks and
temporary files; result discovery; the evaluate lock. The command-line cases train on the
1-D camel data (no data files needed) in a few seconds.
"""

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import CAMEL, TINY, grey, one_line_error, tiny_dataset

from iwae_tutorial import cli
from iwae_tutorial import reproduce as rp
from iwae_tutorial.checkpoints import (
    CheckpointError,
    RunDirLock,
    UnsafeLockError,
    load_tensors,
    save_tensors,
    write_atomic,
    write_json_atomic,
)
from iwae_tutorial.fleet import FLEET_CHECKPOINT, Fleet, FleetMember
from iwae_tutorial.fleet.fast import STATE_DIR, fit_fast
from iwae_tutorial.fleet.stacked import onednn_available
from iwae_tutorial.integrity import MARKER_NAME, ForeignRunDirError
from iwae_tutorial.models import IWAE
from iwae_tutorial.results import check_finite_scores, find_results
from iwae_tutorial.runs import CHECKPOINT_NAME, RunConfig, check_run_data, load_or_train, read_run
from iwae_tutorial.shards import load_sharded

N, BATCH, K = 100, 20, 3


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock), byte for byte."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def small_fleet(gemm: str = "auto") -> Fleet:
    torch.manual_seed(0)
    return Fleet([IWAE(784, [(16, 4)]) for _ in range(2)],
                 [FleetMember("iwae", K, 0, "a"), FleetMember("vae", K, 1, "b")], gemm=gemm)


def edit_checkpoint(path: Path, edit) -> None:
    state = load_tensors(path)
    edit(state)
    save_tensors(path, state)


# ------------------------------------------------------------ 1. links and foreign folders
@pytest.mark.parametrize("dangling", [False, True])
def test_a_lock_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, capsys,
                                                                       dangling):
    run, target = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    if not dangling:
        target.write_text("the user's file\n")
    (run / ".lock").symlink_to(target)
    with pytest.raises(UnsafeLockError, match="symbolic link"):
        with RunDirLock(run):
            pass
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out", str(run)]),
                   str(run.resolve() / ".lock"), "symbolic link", "remove")
    if dangling:
        assert not target.exists()  # not created through the link
    else:
        assert target.read_text() == "the user's file\n"
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written


def test_a_lock_that_is_a_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    (run / ".lock").mkdir(parents=True)
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out", str(run)]),
                   ".lock", "not a plain file")


def test_a_lock_that_is_a_hard_link_is_refused(tmp_path, capsys):
    run, precious = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    precious.write_text("the user's file\n")
    os.link(precious, run / ".lock")
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out", str(run)]),
                   ".lock", "hard link")
    assert precious.read_text() == "the user's file\n"


def test_a_run_file_that_is_a_symlink_is_refused(camel_run, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's file\n")
    log = camel_run / "log.jsonl"
    log.unlink()
    log.symlink_to(precious)  # train appends to its log: it would append to the target
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "2", "--out",
                                     str(camel_run)]), str(log), "symbolic link", "remove it")
    assert precious.read_text() == "the user's file\n"


def test_evaluate_out_that_is_a_symlink_replaces_the_link_not_its_target(camel_run, tmp_path):
    precious, out = tmp_path / "precious.txt", tmp_path / "eval-link.json"
    precious.write_text("the user's file\n")
    out.symlink_to(precious)
    assert cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n", "10",
                     "--no-progress", "--out", str(out)]) == 0
    assert precious.read_text() == "the user's file\n"
    assert not out.is_symlink() and json.loads(out.read_text())["eval_k"] == 5


@pytest.mark.parametrize("restart", [False, True])
def test_train_into_a_folder_another_tool_wrote_is_refused(tmp_path, capsys, restart):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "config.json").write_text('{"tool": "another one", "lr": 0.1}\n')
    (out / "log.jsonl").write_text('{"step": 1}\n')
    before = snapshot(out)
    argv = ["train", *CAMEL, "--epochs", "1", "--out", str(out)] + (["--restart"] if restart
                                                                     else [])
    one_line_error(capsys, cli.main(argv), str(out), "did not write", "config.json",
                   "log.jsonl", "new or empty folder")
    assert snapshot(out) == before
    assert not (out / MARKER_NAME).exists()


def test_a_foreign_checkpoint_does_not_make_a_folder_ours(tmp_path, capsys):
    out = tmp_path / "theirs"
    out.mkdir()
    torch.save({"weights": torch.zeros(3)}, out / CHECKPOINT_NAME)
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--restart", "--out",
                                     str(out)]), "did not write", "checkpoint.pt")
    assert snapshot(out) == before


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "log.jsonl").write_text("mine\n")
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out", ""]),
                   "--out is empty")
    for argv in (["evaluate", "--run", ""], ["evaluate", "--run", ".", "--out", " "],
                 ["reproduce", "--run-root", "", "--budget", "smoke"],
                 ["reproduce", "--results-dir", "", "--budget", "smoke"]):
        one_line_error(capsys, cli.main(argv), "is empty")
    assert (tmp_path / "log.jsonl").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_run_folders_are_marked_and_older_ones_recognised(camel_run, capsys):
    assert (camel_run / MARKER_NAME).is_file()
    (camel_run / MARKER_NAME).unlink()  # a run written before the marker existed
    assert cli.main(["train", *CAMEL, "--epochs", "2", "--out", str(camel_run)]) == 0
    assert (camel_run / MARKER_NAME).is_file()
    assert load_tensors(camel_run / CHECKPOINT_NAME)["epoch"] == 2


def test_train_run_refuses_a_foreign_folder_in_python(tmp_path):
    from iwae_tutorial.runs import train_run

    (tmp_path / "notes.txt").write_text("mine")
    cfg = RunConfig(dataset="camel", objective="iwae", k=2, layers=[[8, 1]], epochs=1,
                    n_train=40)
    with pytest.raises(ForeignRunDirError, match="notes.txt"):
        train_run(cfg, tmp_path, device="cpu", progress=False, restart=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------ 2. the fast trainer's state
@pytest.fixture
def fast_state(tmp_path):
    fit_fast(small_fleet(), grey(N), epochs=1, batch_size=BATCH, run_dir=tmp_path,
             progress=False, handle_signals=False)
    return tmp_path / STATE_DIR


def fast_again(run_dir: Path, epochs: int = 2):
    return fit_fast(small_fleet(), grey(N), epochs=epochs, batch_size=BATCH, run_dir=run_dir,
                    progress=False, handle_signals=False)


def test_fast_state_without_its_index_is_refused_not_deleted(fast_state):
    (fast_state / "index.pt").unlink()
    before = snapshot(fast_state)
    assert any(name.startswith("shard-") for name in before)
    with pytest.raises(CheckpointError) as err:
        fast_again(fast_state.parent)
    msg = cli.user_error(err.value, "reproduce")
    assert str(fast_state) in msg and "index.pt" in msg and "delete" in msg
    assert snapshot(fast_state) == before


@pytest.mark.parametrize("edit, fragment", [
    (lambda ix: ix.update(shards=["../x.pt"]), "shard names"),
    (lambda ix: ix.update(shards=["/etc/passwd"]), "shard names"),
    (lambda ix: ix.update(parts={k: v + 1 for k, v in ix["parts"].items()}), "lacks"),
    (lambda ix: ix.update(parts={k: "2" for k in ix["parts"]}), "part counts"),
    (lambda ix: ix.update(skeleton={"params": {"__tensor__": "/nowhere"}}), "skeleton"),
    (lambda ix: ix.pop("parts"), "lacks parts"),
])
def test_tampered_fast_state_index(fast_state, edit, fragment):
    outside = fast_state.parent.parent / "x.pt"
    save_tensors(outside, {"planted": torch.zeros(1)})
    edit_checkpoint(fast_state / "index.pt", edit)
    before = snapshot(fast_state)
    with pytest.raises(CheckpointError, match=fragment) as err:
        fast_again(fast_state.parent)
    msg = cli.user_error(err.value, "reproduce")
    assert str(fast_state) in msg and "\n" not in msg
    assert snapshot(fast_state) == before


def test_fast_state_of_other_epochs_than_its_history(fast_state):
    state = load_sharded(fast_state)
    state["epoch"] = 3
    from iwae_tutorial.shards import save_sharded

    save_sharded(fast_state, state)
    with pytest.raises(CheckpointError, match="epoch counter says 3"):
        fast_again(fast_state.parent, epochs=4)


def test_fast_log_after_a_kill_before_the_first_save(tmp_path, monkeypatch):
    import builtins

    import iwae_tutorial.session as fast_module  # the harness writes every trainer's log

    real, seen = builtins.open, {"n": 0}

    def killing_open(file, mode="r", *a, **kw):
        if str(file).endswith("log.jsonl") and mode == "a":
            seen["n"] += 1
            if seen["n"] == 3:
                raise KeyboardInterrupt  # a kill in epoch 3, before any state was saved
        return real(file, mode, *a, **kw)

    monkeypatch.setattr(fast_module, "open", killing_open, raising=False)
    with pytest.raises(KeyboardInterrupt):
        fast_again(tmp_path, epochs=3)
    assert not (tmp_path / STATE_DIR / "index.pt").exists()
    monkeypatch.setattr(fast_module, "open", real, raising=False)
    res = fast_again(tmp_path, epochs=3)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert [e["train_bound"]["b"] for e in log] == [h["train_bound"] for h in res.history[1]]


# ------------------------------------------------------------ 3. result files of other settings
@pytest.fixture
def tiny_data(monkeypatch):
    """`reproduce --budget smoke` on tiny_dataset (no data files), via the command line."""
    ds = tiny_dataset()
    monkeypatch.setattr("iwae_tutorial.data.load_dataset", lambda *a, **kw: ds)
    return ds


def reproduce_cli(tmp_path, *extra: str) -> int:
    return cli.main(["reproduce", "--budget", "smoke", "--device", "cpu", "--no-progress",
                     "--run-root", str(tmp_path / "runs"), "--results-dir",
                     str(tmp_path / "res"), "--no-malloc-tuning", "--eval-k", "5", *extra])


@pytest.mark.parametrize("other", [["--eval-seed", "1"], ["--eval-k", "6"],
                                   ["--eval-n", "6"], ["--seed", "1", "--restart"]])
def test_reproduce_does_not_silently_replace_a_result_of_other_settings(
        tmp_path, capsys, tiny_data, other):
    assert reproduce_cli(tmp_path) == 0
    path = tmp_path / "res" / "mnist-smoke.json"
    before, state = path.read_bytes(), snapshot(tmp_path / "runs")
    capsys.readouterr()
    one_line_error(capsys, reproduce_cli(tmp_path, *other), str(path), "other settings",
                   "--force")
    assert path.read_bytes() == before
    assert snapshot(tmp_path / "runs") == state  # --restart did not discard the state
    assert reproduce_cli(tmp_path) == 0  # the same settings: continued (nothing to do)
    assert json.loads(path.read_bytes())["protocol"] == json.loads(before)["protocol"]
    assert reproduce_cli(tmp_path, *other, "--force") == 0
    assert path.read_bytes() != before


def test_reproduce_does_not_replace_a_file_that_is_no_result(tmp_path, capsys, tiny_data):
    path = tmp_path / "res" / "mnist-smoke.json"
    path.parent.mkdir()
    path.write_text("my notes, not JSON")
    one_line_error(capsys, reproduce_cli(tmp_path), str(path), "not a result file", "--force")
    assert path.read_text() == "my notes, not JSON"


# ------------------------------------------------------------ 4. NaN is a failure
def test_evaluate_of_nan_weights_is_status_2_and_writes_nothing(camel_run, capsys):
    ckpt = camel_run / CHECKPOINT_NAME
    edit_checkpoint(ckpt, lambda s: s["model"].update(
        {k: torch.full_like(v, float("nan")) for k, v in s["model"].items()
         if v.is_floating_point()}))
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n",
                                     "10", "--no-progress"]),
                   str(ckpt), "NaN or infinite", "train it again")
    assert not (camel_run / "eval.json").exists()


def test_evaluate_of_a_nan_score_from_finite_weights(camel_run, capsys, monkeypatch):
    import iwae_tutorial.evaluate as evaluate_module

    real = evaluate_module.log_likelihood
    monkeypatch.setattr(evaluate_module, "log_likelihood",
                        lambda *a, **kw: real(*a, **kw) * float("nan"))
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n",
                                     "10", "--no-progress"]),
                   str(camel_run / CHECKPOINT_NAME), "non-finite", "nothing was written")
    assert not (camel_run / "eval.json").exists()


@pytest.mark.parametrize("trainer", ["exact", "fast"])
def test_reproduce_never_writes_complete_with_a_nan(tmp_path, trainer):
    kw = dict(run_root=tmp_path / "runs", results_dir=tmp_path / "res", device="cpu",
              progress=False, ds=tiny_dataset(), trainer=trainer, verbose=False)
    status, path = rp.reproduce("mnist", TINY, **kw)
    assert status == "done"
    path.unlink()
    stages = next((tmp_path / "runs").glob("*/stages.pt"))
    edit_checkpoint(stages, lambda s: next(iter(s["stages"].values()))["ll"].fill_(
        float("nan")))
    with pytest.raises(CheckpointError) as err:
        rp.reproduce("mnist", TINY, **kw)
    msg = cli.user_error(err.value, "reproduce")
    assert str(stages) in msg and "delete it" in msg
    assert not path.exists()


def test_a_table_with_a_nan_is_not_written():
    with pytest.raises(ValueError, match="r.json would record a NaN .* a-cell"):
        check_finite_scores({"configurations": [{"name": "a-cell", "nll": float("nan")}],
                             "stages": []}, "r.json")
    check_finite_scores({"configurations": [{"name": "ok", "nll": 90.0}], "stages": []}, "r")


# ------------------------------------------------------------ 5. the checkpoint is the truth
@pytest.mark.parametrize("edit, fragment", [
    ({"objective": "vae"}, "objective 'vae' there, 'iwae' in the checkpoint"),
    ({"k": 50}, "k 50 there, 2 in the checkpoint"),
    ({"layers": [[8, 2]]}, "layers [[8, 2]] there"),
    ({"layers": [[200, 200, 100], [100, 100, 50]]}, "layers"),
    ({"seed": 3}, "seed 3 there"),
    ({"n_train": 100}, "n 100 there"),
])
def test_evaluate_refuses_a_config_json_that_does_not_describe_the_checkpoint(
        camel_run, capsys, edit, fragment):
    cfg_path = camel_run / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **edit}))
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n",
                                     "10"]),
                   str(cfg_path), str(camel_run / CHECKPOINT_NAME), fragment,
                   "the checkpoint is the truth")
    assert not (camel_run / "eval.json").exists()


def test_evaluate_refuses_another_data_set(camel_run, capsys, monkeypatch):
    cfg_path = camel_run / "config.json"
    model, cfg, _, meta = read_run(camel_run)
    ds = tiny_dataset()  # 784 values per image: not the camel's 1
    with pytest.raises(CheckpointError, match="another data set") as err:
        check_run_data(camel_run, meta, ds)
    assert str(cfg_path) in str(err.value)
    from iwae_tutorial.data import load_dataset

    camel = load_dataset("camel", seed=cfg.seed)
    check_run_data(camel_run, meta, camel)  # the right one passes
    camel.x_train = camel.x_train.flip(0)  # same size, other images
    with pytest.raises(CheckpointError, match="not trained on the first 200"):
        check_run_data(camel_run, meta, camel)


def test_load_or_train_refuses_weights_that_do_not_match(tmp_path):
    torch.manual_seed(0)
    model = IWAE(1, [[8, 2]], likelihood="gaussian")
    save_tensors(tmp_path / "m.pt", {"model": model.state_dict(),
                                     "model_config": model.config})
    (tmp_path / "m.json").write_text(json.dumps({"dataset": "camel", "objective": "iwae",
                                                 "k": 5, "layers": [[8, 50]]}))
    cfg = RunConfig(dataset="camel", objective="iwae", k=5, layers=[[8, 50]], epochs=1)
    with pytest.raises(CheckpointError, match=r"layers \[\[8, 2\]\], not \[\[8, 50\]\]"):
        load_or_train(cfg, "cpu", root=tmp_path, use_checkpoint=True, progress=False)


# ------------------------------------------------------------ 6. resume exact, whatever the choice
def test_the_fleet_resumes_with_the_kernels_it_was_trained_with(tmp_path, monkeypatch):
    import iwae_tutorial.fleet.stacked as stacked

    whole = small_fleet("bmm")
    full = whole.fit(grey(N), epochs=2, batch_size=BATCH, progress=False, handle_signals=False)
    small_fleet("bmm").fit(grey(N), epochs=1, batch_size=BATCH, run_dir=tmp_path,
                           progress=False, handle_signals=False)
    assert load_tensors(tmp_path / FLEET_CHECKPOINT)["gemm"] == "bmm"
    # the next process times the kernels and would choose oneDNN
    monkeypatch.setattr(stacked, "_onednn_faster", True)
    monkeypatch.delenv("IWAE_FLEET_GEMM", raising=False)
    fleet = small_fleet("auto")
    assert fleet.gemm == ("onednn" if onednn_available() else "bmm")
    res = fleet.fit(grey(N), epochs=2, batch_size=BATCH, run_dir=tmp_path, progress=False,
                    handle_signals=False)
    assert fleet.gemm == "bmm" and load_tensors(tmp_path / FLEET_CHECKPOINT)["gemm"] == "bmm"
    assert [[h["train_bound"] for h in m] for m in res.history] == \
        [[h["train_bound"] for h in m] for m in full.history]  # bit for bit
    for i in range(len(fleet)):
        mine, theirs = fleet.state_dict_of(i), whole.state_dict_of(i)
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    if onednn_available():  # an explicit other choice is refused, not mixed
        with pytest.raises(ValueError, match="trained with gemm 'bmm'.*--gemm auto or bmm"):
            small_fleet("onednn").fit(grey(N), epochs=3, batch_size=BATCH, run_dir=tmp_path,
                                      progress=False, handle_signals=False)


def test_a_bogus_kernel_variable_is_an_error_before_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IWAE_FLEET_GEMM", "bogus")
    with pytest.raises(ValueError, match="IWAE_FLEET_GEMM='bogus'"):
        small_fleet()
    monkeypatch.setattr("iwae_tutorial.data.load_dataset",
                        lambda *a, **kw: pytest.fail("loaded data"))
    one_line_error(capsys, reproduce_cli(tmp_path), "IWAE_FLEET_GEMM='bogus'",
                   "auto, onednn or bmm")
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------ 7. tampered state, one line
@pytest.fixture
def camel_run2(tmp_path, capsys):
    """A camel run of 2 epochs, its checkpoint to be tampered with."""
    out = tmp_path / "run2"
    assert cli.main(["train", *CAMEL, "--skip-eval", "--epochs", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("edit, fragment", [
    (lambda s: s["rng"].pop("noise"), "lacks the state of the random generator 'noise'"),
    (lambda s: s["rng"].update(order=torch.zeros(3)),
     "state of its random generator 'order' is malformed"),
    (lambda s: s.update(rng=[1, 2]), "random generator states are a list"),
    (lambda s: s["history"].pop(0), "entry 1 of its history is numbered 2"),
    (lambda s: s["history"].pop(), "epoch counter says 2 epochs done, its history holds 1"),
    (lambda s: s.update(epoch=5), "epoch counter says 5"),
    (lambda s: s.update(history={"a": 1}), "history is a dict"),
    (lambda s: s.update(history=[1, 2]), "entry 1 of its history is a int"),
    (lambda s: s["history"][0].pop("lr"), "lacks lr"),
    (lambda s: s["history"][1].update(lr=float("nan")), "learning rate nan"),
    (lambda s: s["model"].pop(next(iter(s["model"]))), "does not fit this model"),
])
def test_a_tampered_checkpoint_under_train(camel_run2, capsys, edit, fragment):
    ckpt = camel_run2 / CHECKPOINT_NAME
    edit_checkpoint(ckpt, edit)
    before = snapshot(camel_run2)
    one_line_error(capsys, cli.main(["train", *CAMEL, "--skip-eval", "--epochs", "3", "--out",
                                     str(camel_run2)]), str(ckpt), fragment, "--restart")
    after = snapshot(camel_run2)
    if "does not fit" in fragment:  # found on loading the weights: config.json says 3 epochs
        assert json.loads(after.pop("config.json"))["epochs"] == 3
        before.pop("config.json")
    assert after == before


@pytest.mark.parametrize("raw, fragment", [
    ('"k": 1e400', "k must be an integer of at least 1"),
    ('"k": NaN', "k must be an integer"),
    ('"k": 2.5', "k must be an integer"),
    ('"epochs": "x"', "epochs must be an integer"),
    ('"epochs": -1', "epochs must be an integer of at least 1"),
    ('"seed": true', "seed must be an integer"),
    ('"layers": [[8, 1e400]]', "layers must be lists of positive integers"),
    ('"layers": "8,1"', "layers must be lists"),
    ('"objective": 3', "objective must be a name"),
    ('"lr_scale": "x"', "malformed"),
])
def test_a_tampered_config_json(camel_run, capsys, raw, fragment):
    cfg_path = camel_run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    key = raw.split(":")[0].strip('"')
    text = json.dumps({**cfg, key: "PLACEHOLDER"}).replace(f'"{key}": "PLACEHOLDER"', raw)
    cfg_path.write_text(text)
    for argv in (["evaluate", "--run", str(camel_run)],
                 ["train", *CAMEL, "--epochs", "2", "--out", str(camel_run)]):
        one_line_error(capsys, cli.main(argv), str(cfg_path), fragment)
    assert cfg_path.read_text() == text


def test_a_checkpoint_of_garbage_bytes_is_corrupt_not_pickled_code(camel_run, capsys):
    ckpt = camel_run / CHECKPOINT_NAME
    ckpt.write_bytes(os.urandom(3000))
    line = one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run)]), str(ckpt),
                          "truncated, corrupt or not a checkpoint")
    assert "could run code" not in line


def test_a_fleet_checkpoint_of_other_epochs_than_its_history(tmp_path):
    small_fleet("bmm").fit(grey(N), epochs=1, batch_size=BATCH, run_dir=tmp_path,
                           progress=False, handle_signals=False)
    ckpt = tmp_path / FLEET_CHECKPOINT
    edit_checkpoint(ckpt, lambda s: s.update(epoch=2))
    with pytest.raises(CheckpointError, match="epoch counter says 2") as err:
        small_fleet("bmm").fit(grey(N), epochs=3, batch_size=BATCH, run_dir=tmp_path,
                               progress=False, handle_signals=False)
    assert str(ckpt) in str(err.value)
    edit_checkpoint(ckpt, lambda s: s.update(epoch=1, rng=s["rng"][:1]))
    with pytest.raises(CheckpointError, match="random generator states"):
        small_fleet("bmm").fit(grey(N), epochs=3, batch_size=BATCH, run_dir=tmp_path,
                               progress=False, handle_signals=False)


# ------------------------------------------------------------ 8. full disks, temporary files
@pytest.mark.parametrize("message, fragments", [
    ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598",
     ["the write failed", "check that the disk has free space"]),
    ("PytorchStreamWriter failed writing file data/0: No space left on device",
     ["No space left on device", "free some disk space"]),
])
def test_torch_save_failing_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch, message,
                                                       fragments):
    out = tmp_path / "run"

    def full(*a, **kw):
        raise RuntimeError(message + "\nframe #0: c10::Error ...\nframe #1: ...")

    monkeypatch.setattr(torch, "save", full)
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out", str(out)]),
                   str(out / CHECKPOINT_NAME), *fragments)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary left


def test_full_disk_while_writing_eval_json_names_it(camel_run, capsys, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n",
                                     "10", "--no-progress"]),
                   str(camel_run / "eval.json"), "No space left on device",
                   "free some disk space")
    assert not [p for p in camel_run.iterdir() if p.name.endswith(".tmp")]


def test_a_file_size_limit_is_one_line(tmp_path):
    """A real write failure: RLIMIT_FSIZE makes the checkpoint write fail (EFBIG), in a
    subprocess; skipped where the limit cannot be set."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    except (ValueError, OSError):
        pytest.skip("RLIMIT_FSIZE is not available")
    if hard != resource.RLIM_INFINITY and hard < 20_000:
        pytest.skip("the file-size limit is already low")
    code = textwrap.dedent("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))
        from iwae_tutorial.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", code, "train", *CAMEL[:2], "--layers",
                           "200,200,20", "--n-train", "40", "--epochs", "1", "--skip-eval",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode == 0:
        pytest.skip("the file-size limit had no effect here")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and str(out / CHECKPOINT_NAME) in line
    assert "file-size limit" in line or "free some disk space" in line, line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint.pt"
    code = ("import os, sys\nfrom iwae_tutorial.checkpoints import write_atomic\n"
            "def die(f):\n    f.write(b'half'); f.flush(); os.kill(os.getpid(), 9)\n"
            "write_atomic(sys.argv[1], die)")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], timeout=120)
    assert proc.returncode != 0
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".checkpoint.pt.") and not target.exists()
    # a temporary of a live process (a writer at work) is kept; older-style names too
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.abcdefgh.tmp"
    live.write_bytes(b"in progress")
    other = tmp_path / ".checkpoint.pt.bak.1.abcdefgh.tmp"  # another file's temporary
    other.write_bytes(b"x")
    save_tensors(target, {"a": torch.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["checkpoint.pt", live.name, other.name])
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").exists() and live.exists()


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("unexpected pos 7 vs 3")

    with pytest.raises(OSError) as err:
        write_atomic(target, boom)
    assert err.value.filename == str(target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_memory_error_in_reproduce_is_one_line(tmp_path, capsys, monkeypatch):
    def no_memory(*a, **kw):
        raise MemoryError()

    monkeypatch.setattr(rp, "reproduce", no_memory)
    one_line_error(capsys, reproduce_cli(tmp_path), "out of memory", "--eval-batch-size")


# ------------------------------------------------------------ 9. finding results, the lock
def test_find_results_skips_malformed_files_and_goes_on(tmp_path):
    status, path = rp.reproduce("mnist", TINY, run_root=tmp_path / "runs",
                                results_dir=tmp_path / "res", device="cpu", progress=False,
                                ds=tiny_dataset(), verbose=False)
    res = tmp_path / "res"
    good = json.loads(path.read_text())
    (res / "a-garbage.json").write_text("{not json")
    (res / "b-list.json").write_text("[1, 2]")
    (res / "c-bad-cells.json").write_text(json.dumps({**good, "configurations": "x"}))
    (res / "d-no-epochs.json").write_text(json.dumps({**good, "protocol": {}}))
    (res / "e-cells-not-dicts.json").write_text(json.dumps({**good, "configurations": [1]}))
    found = find_results(res)
    assert [Path(r["_path"]).name for r in found] == [path.name]


def test_evaluate_takes_the_run_lock(camel_run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from iwae_tutorial.checkpoints import "
         "RunDirLock\nwith RunDirLock(sys.argv[1]):\n    print('held', flush=True); "
         "time.sleep(60)", str(camel_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--k", "5",
                                         "--n", "10", "--no-progress"]),
                       f"in use by process {holder.pid}", "another --run")
        assert not (camel_run / "eval.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n", "10",
                     "--no-progress"]) == 0


@pytest.mark.parametrize("change", [{"done": "x"}, {"done": 10**6}, {"ll": "scores"},
                                    {"rng": []}, {"gemm": "bogus"}])
def test_a_tampered_block_evaluation_is_one_line(tmp_path, change):
    """reproduce's resumable evaluation state with a wrong type or size: one line naming the
    file and the fix, status 2 (not a traceback)."""
    from iwae_tutorial import cli
    from iwae_tutorial import reproduce as rp
    from iwae_tutorial.checkpoints import CheckpointError, load_tensors, save_tensors

    kw = dict(run_root=tmp_path / "runs", results_dir=tmp_path / "res", device="cpu",
              progress=False, ds=tiny_dataset(), eval_block=3)
    path = tmp_path / "runs" / "mnist-smoke" / "1L" / "stages" / "epoch-0001" / "eval.pt"
    for _ in range(5):
        rp.reproduce("mnist", TINY, max_minutes=1e-9, **kw)
        if path.exists():
            break
    save_tensors(path, {**load_tensors(path), **change})
    with pytest.raises(CheckpointError) as err:
        rp.reproduce("mnist", TINY, **kw)
    msg = cli.user_error(err.value, "reproduce")
    assert str(path) in msg and "delete it" in msg and "\n" not in msg
