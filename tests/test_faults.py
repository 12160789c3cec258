"""Faults and bad input: no code from a checkpoint, no NaN in a saved checkpoint, one-line errors
(exit status 2) on every fault path, one writer per run directory, a log that survives a kill.

The command-line cases train on the 1-D camel data (no data files needed) in a few seconds.
The data-file faults (corrupt npz, unreadable files, stale downloads) are in test_data*.py.
"""

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import CAMEL, TINY, grey, one_line_error, seeded_model, tiny_dataset

from iwae_tutorial import cli
from iwae_tutorial import reproduce as rp
from iwae_tutorial.checkpoints import (
    CheckpointError,
    RunDirLock,
    check_writable,
    load_tensors,
    save_tensors,
    write_atomic,
    write_json_atomic,
)
from iwae_tutorial.fleet import FLEET_CHECKPOINT, Fleet, FleetMember
from iwae_tutorial.models import IWAE
from iwae_tutorial.schedule import constant_schedule
from iwae_tutorial.train import CHECKPOINT_NAME, TrainingDivergedError, fit, load_checkpoint

N, BATCH, K = 100, 20, 3
STEPS = N // BATCH


def small_model(seed: int = 0) -> IWAE:
    return seeded_model([(16, 4)], seed)


class Planted:
    """A pickle that, when loaded with weights_only=False, creates a file (i.e. runs code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------ 1. no code from a pickle
def test_a_planted_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": Planted(marker)}, path)
    torch.load(path, weights_only=False)  # the attack works against an unsafe loader...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refused") as err:
        load_tensors(path)  # ...and not against ours
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_cli_on_a_planted_checkpoint(camel_run, capsys, tmp_path, command):
    marker = tmp_path / "pwned"
    torch.save({"model": Planted(marker), "model_config": {}, "history": []},
               camel_run / CHECKPOINT_NAME)
    argv = (["evaluate", "--run", str(camel_run), "--k", "5", "--n", "10"] if command ==
            "evaluate" else ["train", *CAMEL, "--epochs", "2", "--out", str(camel_run)])
    one_line_error(capsys, cli.main(argv), str(camel_run / CHECKPOINT_NAME), "refused")
    assert not marker.exists()


def test_fleet_and_eval_checkpoints_load_safely(tmp_path):
    marker = tmp_path / "pwned"
    ds = tiny_dataset()
    run = tmp_path / "runs" / "mnist-smoke"
    for planted in (run / "1L" / FLEET_CHECKPOINT, run / "stages.pt"):
        for p in (run / "1L" / FLEET_CHECKPOINT, run / "stages.pt"):
            p.unlink(missing_ok=True)
        planted.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"params": Planted(marker)}, planted)
        with pytest.raises(CheckpointError, match="refused"):
            rp.reproduce("mnist", TINY, run_root=tmp_path / "runs",
                         results_dir=tmp_path / "res", device="cpu", progress=False, ds=ds)
        assert not marker.exists()


# ------------------------------------------------------------------ 2. no NaN in a checkpoint
def test_nan_gradient_on_an_epochs_last_step_is_not_saved(tmp_path):
    """A NaN gradient with a finite loss, on the last step of epoch 2: the error says so, and
    the checkpoint on disk stays epoch 1's (finite)."""
    model = small_model()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 2 * STEPS else grad

    model.decoder[-1].logits.weight.register_hook(poison)
    with pytest.raises(TrainingDivergedError, match="parameter became NaN or infinite during "
                                                    "epoch 2") as err:
        fit(model, grey(N), k=K, epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False)
    assert "after epoch 1" in str(err.value)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_fleet_nan_gradient_names_the_member_and_keeps_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    models = [IWAE(784, [(16, 4)]) for _ in range(2)]
    members = [FleetMember("iwae", K, 0, "a"), FleetMember("vae", K, 1, "b")]
    fleet = Fleet(models, members)
    group = fleet.groups[0]
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        if calls["n"] == 2 * STEPS:  # the last step of epoch 2, member "b" only
            grad = grad.clone()
            grad[group.idx.index(1)] = float("nan")
        return grad

    next(iter(group.params.values())).register_hook(poison)
    with pytest.raises(TrainingDivergedError, match="'b'.*NaN or infinite"):
        fleet.fit(grey(N), epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False)
    state = load_tensors(tmp_path / FLEET_CHECKPOINT)
    assert state["epoch"] == 1 and state["step"] == 0
    assert all(torch.isfinite(t).all() for g in state["params"].values() for t in g.values())


# ------------------------------------------------------------------ 3. one line, status 2
def test_truncated_checkpoint_under_train(camel_run, capsys):
    ckpt = camel_run / CHECKPOINT_NAME
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "2", "--out", str(camel_run)]),
                   str(ckpt), "truncated", "--restart")
    assert cli.main(["train", *CAMEL, "--epochs", "2", "--restart", "--out",
                     str(camel_run)]) == 0  # the fix the message names works
    assert load_checkpoint(ckpt)["epoch"] == 2


@pytest.mark.parametrize("name", [f"1L/{FLEET_CHECKPOINT}", "stages.pt",
                                  "1L/stages/epoch-0001/eval.pt"])
def test_corrupt_fleet_or_eval_state_under_reproduce(tmp_path, name):
    kw = dict(run_root=tmp_path / "runs", results_dir=tmp_path / "res", device="cpu",
              progress=False, ds=tiny_dataset(), eval_block=3)
    path = tmp_path / "runs" / "mnist-smoke" / name
    for _ in range(5):  # stopped after a step or a block: until the file exists
        rp.reproduce("mnist", TINY, max_minutes=1e-9, **kw)
        if path.exists():
            break
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        rp.reproduce("mnist", TINY, **kw)
    msg = cli.user_error(err.value, "reproduce")
    assert str(path) in msg and ("--restart" in msg or "delete it" in msg) and "\n" not in msg


def test_reproduce_of_another_seed_names_the_options(tmp_path):
    kw = dict(run_root=tmp_path / "runs", results_dir=tmp_path / "res", device="cpu",
              progress=False, ds=tiny_dataset())
    rp.reproduce("mnist", TINY, max_minutes=1e-9, **kw)  # stops early, state saved
    with pytest.raises(ValueError) as err:
        rp.reproduce("mnist", TINY, seed=1, **kw)
    msg = str(err.value)
    assert "another fleet" in msg and "--run-root" in msg and "--restart" in msg
    assert rp.reproduce("mnist", TINY, seed=1, restart=True, **kw)[0] == "done"


def test_full_disk_keeps_the_old_file_and_is_one_line(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as err:
        write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    msg = cli.user_error(err.value, "train")
    assert "No space left on device" in msg and "free some disk space" in msg


def test_full_disk_under_evaluate_is_status_2(camel_run, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code = cli.main(["evaluate", "--run", str(camel_run), "--k", "5", "--n", "10",
                     "--no-progress"])
    one_line_error(capsys, code, "No space left on device", "free some disk space")
    assert not (camel_run / "eval.json").exists()


def test_unwritable_places_are_found_before_any_computing(tmp_path, capsys, monkeypatch,
                                                          camel_run):
    # --out naming a folder
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--out",
                                     str(tmp_path)]), "is a folder")
    # --out that is a file, for train
    f = tmp_path / "file"
    f.write_text("x")
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out", str(f)]),
                   "not a directory")

    # a folder that cannot be written (simulated: the tests may run as root)
    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    called = {"data": 0}
    monkeypatch.setattr("iwae_tutorial.checkpoints.tempfile.mkstemp", denied)
    monkeypatch.setattr(cli, "_load_dataset", lambda *a: called.update(data=1))
    one_line_error(capsys, cli.main(["train", *CAMEL, "--out", str(tmp_path / "new")]),
                   "cannot write into", "choose a writable place")
    one_line_error(capsys, cli.main(["reproduce", "--budget", "smoke", "--results-dir",
                                     str(tmp_path / "res"), "--run-root", str(tmp_path / "r")]),
                   "--results-dir", "cannot write into")
    assert called["data"] == 0 and not (tmp_path / "new").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs a POSIX user for whom chmod 555 blocks writes")
def test_read_only_folder_for_a_normal_user(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="cannot write into"):
            check_writable(ro / "result.json")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("device, fragment", [
    ("mps", "--device mps: only cpu and cuda"),
    ("meta", "--device meta: only cpu and cuda"),
    ("bogus", "--device bogus is not a device"),
])
def test_unusable_devices(camel_run, capsys, device, fragment):
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run), "--device", device]),
                   fragment)


def test_device_from_the_environment_is_named(camel_run, capsys, monkeypatch):
    monkeypatch.setenv("IWAE_DEVICE", "bogus")
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run)]),
                   "IWAE_DEVICE=bogus is not a device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_reproduce_on_cuda_without_a_gpu(capsys, tmp_path):
    one_line_error(capsys, cli.main(["reproduce", "--device", "cuda", "--budget", "smoke",
                                     "--run-root", str(tmp_path)]),
                   "--device cuda: no CUDA GPU is available here")


def test_out_of_memory_suggests_smaller_sizes(tmp_path):
    """A real allocation failure (a huge --k under a 3 GB address-space limit), in a
    subprocess: one line, status 2, the options to shrink."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from iwae_tutorial.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, "train", "--dataset", "camel",
                           "--layers", "8,1", "--n-train", "40", "--epochs", "1", "--k",
                           "100000000", "--no-progress", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "out of memory" in line and "--k" in line and "Traceback" not in proc.stderr


@pytest.mark.parametrize("edit, fragment", [
    (lambda c: {**c, "colour": "blue"}, "unknown key(s) colour"),
    (lambda c: {**c, "k": "five"}, "malformed"),
    (lambda c: [1, 2], "no JSON object"),
])
def test_bad_config_json(camel_run, capsys, edit, fragment):
    cfg_path = camel_run / "config.json"
    cfg_path.write_text(json.dumps(edit(json.loads(cfg_path.read_text()))))
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run)]), str(cfg_path),
                   fragment)


def test_checkpoint_without_model_config(camel_run, capsys):
    ckpt = camel_run / CHECKPOINT_NAME
    state = load_checkpoint(ckpt)
    del state["model_config"]
    save_tensors(ckpt, state)
    one_line_error(capsys, cli.main(["evaluate", "--run", str(camel_run)]), str(ckpt),
                   "lacks model_config")


# ------------------------------------------------------------------ 4. one writer per run dir
def test_a_second_process_in_a_run_directory_is_refused(camel_run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from iwae_tutorial.checkpoints import "
         "RunDirLock\nwith RunDirLock(sys.argv[1]):\n    print('held', flush=True); "
         "time.sleep(60)", str(camel_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.read_bytes() for p in camel_run.iterdir() if p.name != ".lock"}
        one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "2", "--out",
                                         str(camel_run)]),
                       f"in use by process {holder.pid}", "another --out")
        after = {p.name: p.read_bytes() for p in camel_run.iterdir() if p.name != ".lock"}
        assert after == before  # nothing was touched
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its process (kill -9): the run continues
    assert cli.main(["train", *CAMEL, "--epochs", "2", "--out", str(camel_run)]) == 0


def test_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    with RunDirLock(tmp_path), RunDirLock(tmp_path):  # train_run -> fit
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from iwae_tutorial.checkpoints import "
             "RunDirLock, RunDirLockedError\ntry:\n    RunDirLock(sys.argv[1]).__enter__()\n"
             "except RunDirLockedError as e:\n    print('refused:', e)", str(tmp_path)],
            capture_output=True, text=True, timeout=60).stdout
        assert out.startswith("refused:") and f"process {os.getpid()}" in out
    child = subprocess.run([sys.executable, "-c", "import sys; from iwae_tutorial.checkpoints "
                            "import RunDirLock\nRunDirLock(sys.argv[1]).__enter__()",
                            str(tmp_path)], capture_output=True, timeout=60)
    assert child.returncode == 0  # released when the block ended


def test_concurrent_writers_use_unique_temporary_names(tmp_path):
    """Two writers of one file at once (e.g. two processes saving a checkpoint): no crash at
    the rename, and the file is one of the two complete versions."""
    target = tmp_path / "checkpoint.pt"
    started = threading.Barrier(2)
    errors = []

    def slow_writer(tag: bytes):
        def write(f):
            started.wait(timeout=10)
            for _ in range(20):
                f.write(tag * 1000)
                time.sleep(0.002)
        try:
            write_atomic(target, write)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=slow_writer, args=(t,)) for t in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    data = target.read_bytes()
    assert data in (b"a" * 20000, b"b" * 20000)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


# ------------------------------------------------------------------ 5. the log after a kill
class _KillAtLog:
    """Raise KeyboardInterrupt (a kill) when log.jsonl is opened for the n-th append."""

    def __init__(self, monkeypatch, module, at: int):
        import builtins

        self.real, self.seen, self.at = builtins.open, 0, at
        monkeypatch.setattr(module, "open", self, raising=False)

    def __call__(self, file, mode="r", *a, **kw):
        if str(file).endswith("log.jsonl") and mode == "a":
            self.seen += 1
            if self.seen == self.at:
                raise KeyboardInterrupt
        return self.real(file, mode, *a, **kw)


def test_kill_between_checkpoint_and_log_line(tmp_path, monkeypatch):
    import iwae_tutorial.session as session_module  # the harness writes every trainer's log

    kill = _KillAtLog(monkeypatch, session_module, at=2)
    with pytest.raises(KeyboardInterrupt):
        fit(small_model(), grey(N), k=K, epochs=3, batch_size=BATCH, run_dir=tmp_path,
            progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 2  # saved, not logged
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1
    kill.at = -1
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lr"')  # and a torn line, as a kill mid-write leaves
    history = fit(small_model(), grey(N), k=K, epochs=3, batch_size=BATCH, run_dir=tmp_path,
                  progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3] and log == history


def test_fleet_log_after_a_kill(tmp_path, monkeypatch):
    import iwae_tutorial.session as session_module  # the harness writes every trainer's log

    def make():
        torch.manual_seed(0)
        return Fleet([IWAE(784, [(16, 4)]) for _ in range(2)],
                     [FleetMember("iwae", K, 0, "a"), FleetMember("vae", K, 1, "b")])

    kill = _KillAtLog(monkeypatch, session_module, at=2)
    with pytest.raises(KeyboardInterrupt):
        make().fit(grey(N), epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False)
    kill.at = -1
    res = make().fit(grey(N), epochs=3, batch_size=BATCH, run_dir=tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert [e["train_bound"]["b"] for e in log] == [h["train_bound"] for h in res.history[1]]


# ------------------------------------------------------------------ 6. smaller ones
def test_fewer_epochs_than_done_is_refused(camel_run, capsys):
    cfg = (camel_run / "config.json").read_text()
    assert cli.main(["train", *CAMEL, "--epochs", "2", "--out", str(camel_run)]) == 0
    cfg2 = (camel_run / "config.json").read_text()
    capsys.readouterr()
    one_line_error(capsys, cli.main(["train", *CAMEL, "--epochs", "1", "--out",
                                     str(camel_run)]), "2 epochs", "--epochs 2")
    assert (camel_run / "config.json").read_text() == cfg2 != cfg


def test_checkpoint_resumed_on_other_data_or_rate_is_refused(tmp_path):
    """Without config.json to compare, the checkpoint itself knows its data and its rates."""
    fit(small_model(), grey(N, seed=0), k=K, schedule=constant_schedule(1, 1e-3), batch_size=BATCH,
        run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another configuration .*data"):
        fit(small_model(), grey(N, seed=1), k=K, schedule=constant_schedule(2, 1e-3),
            batch_size=BATCH, run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="learning rate 0.001, the schedule now asks for 0.002"):
        fit(small_model(), grey(N, seed=0), k=K, schedule=constant_schedule(2, 2e-3),
            batch_size=BATCH, run_dir=tmp_path, progress=False)
    fit(small_model(), grey(N, seed=0), k=K, schedule=constant_schedule(2, 1e-3), batch_size=BATCH,
        run_dir=tmp_path, progress=False)  # the same data and rate resume


def test_deleted_config_json_other_dataset(camel_run, capsys, tmp_path):
    """A camel checkpoint whose config.json was deleted cannot be resumed on other data."""
    (camel_run / "config.json").unlink()
    code = cli.main(["train", *CAMEL, "--n-train", "120", "--epochs", "2", "--out",
                     str(camel_run)])
    one_line_error(capsys, code, "another configuration", "n 200 there, 120 now")


def test_every_file_goes_through_the_one_atomic_writer():
    """No module but checkpoints.py writes a file itself (torch.save, write_text, open(..., "w"),
    np.save, mkstemp, os.replace); append-only logs (open(..., "a")) are the one exception,
    repaired on resume by checkpoints.sync_log."""
    import re

    import iwae_tutorial

    root = Path(iwae_tutorial.__file__).parent
    pattern = re.compile(r"torch\.save\(|\.write_text\(|\.write_bytes\(|np\.save|mkstemp\(|"
                         r"os\.replace\(|open\([^)]*[\"'](w|wb|x|xb|w\+)[\"']")
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "checkpoints.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not code.strip().startswith(("\"", "'", ":func:")):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
