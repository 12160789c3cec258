"""The command line: argument errors, missing data, the reproduce hook, and one short run end
to end (train -> result.json -> evaluate -> resume) on 400 MNIST images."""

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from iwae_tutorial import cli
from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.data import find_data_dir, load_dataset
from iwae_tutorial.evaluate import log_likelihood
from iwae_tutorial.provenance import provenance
from iwae_tutorial.runs import load_run

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]
RESULT_KEYS = {  # the one result schema (results.model_record)
    "schema", "config", "name", "dataset", "n_train", "device", "epochs", "epochs_planned",
    "train_bound", "train_bound_per_epoch", "nll", "nll_stderr", "eval_k",
    "eval_n", "eval_n_total", "eval_subset", "eval_seed", "active_units", "active_units_total",
    "active_units_variances", "active_units_n", "active_units_threshold", "wall_time_s",
    "provenance",
}
PROVENANCE_KEYS = {"git_commit", "git_dirty", "torch_version", "python_version", "device",
                   "device_name", "torch_threads", "date_utc", "wall_seconds", "command"}


def run_cli(*args, env=None, timeout=240):
    """``python -m iwae_tutorial ARGS`` in a subprocess -> CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "iwae_tutorial", *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error" in proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------ no data needed
def test_help_lists_the_subcommands_and_objectives(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "evaluate" in out and "reproduce" in out
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("--dataset", "--objective", "--layers", "--eval-k", "--eval-n", "--no-download",
                 "iwae", "vae", "omniglot-lake28"):
        assert word in out


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--out", "x", "--layers", "200,abc"], "cannot read layers"),
    (["train", "--out", "x", "--layers", "200,0"], "cannot read layers"),
    (["train", "--out", "x", "--layers", ";"], "cannot read layers"),
    (["train", "--out", "x", "--layers", "200,,50"], "cannot read layers"),
    (["train", "--out", "x", "--layers", "200,200,50;"], "cannot read layers"),
    (["train", "--out", "x", "--seed", "-1"], "argument --seed: expected a seed from 0"),
    (["train", "--out", "x", "--seed", str(2**64)], "argument --seed: expected a seed from 0"),
    (["reproduce", "--seed", "-2"], "argument --seed: expected a seed from 0"),
    (["evaluate", "--run", "x", "--eval-seed", "x1"], "argument --eval-seed"),
    (["train", "--out", "x", "--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["train", "--out", "x", "--objective", "wake-sleep"],
     "unknown objective 'wake-sleep'; choose one of"),
    (["train", "--out", "x", "--k", "0"], "positive integer"),
    (["train", "--dataset", "mnist"], "--out"),
    (["train", "--out", "x", "--epochs", "1", "--lr", "0"], "positive finite number"),
    (["train", "--out", "x", "--epochs", "1", "--lr", "fast"], "number, got 'fast'"),
    (["train", "--out", "x", "--lr", "2e-3"], "needs a number of epochs"),
    (["evaluate"], "--run"),
    (["fly"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_a_message(argv, fragment, capsys, tmp_path):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert not (tmp_path / "x").exists()


def test_bad_layers_in_a_subprocess_no_traceback(tmp_path):
    proc = run_cli("train", "--layers", "200,200;x", "--out", tmp_path / "run")
    assert_clean_error(proc, "--layers", "cannot read layers")
    assert not (tmp_path / "run").exists()


def test_missing_data_is_one_clear_line(tmp_path):
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    cache.mkdir()
    proc = run_cli("train", "--dataset", "mnist", "--epochs", "1", "--no-download",
                   "--out", tmp_path / "run",
                   env={"IWAE_DATA_DIR": str(empty), "XDG_CACHE_HOME": str(cache)})
    assert_clean_error(proc, "mnist", str(empty))
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists()
    assert not any(empty.iterdir())  # nothing downloaded or created


def test_evaluate_of_a_missing_run(tmp_path, capsys):
    assert cli.main(["evaluate", "--run", str(tmp_path / "nothing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_reproduce_options_are_parsed_by_the_cli(monkeypatch, capsys, tmp_path):
    """All argparse lives in cli.py: reproduce's options, data set names as in train, and the
    call to :func:`iwae_tutorial.reproduce.reproduce` with them."""
    import iwae_tutorial.reproduce as rp

    seen = {}

    def fake_reproduce(dataset, budget, **kw):
        seen.update(dataset=dataset, budget=budget, **kw)
        return "done", tmp_path / "r.json"

    monkeypatch.setattr(rp, "reproduce", fake_reproduce)
    argv = ["reproduce", "--dataset", "omniglot-lake28", "--budget", "7", "--seed", "3",
            "--device", "cpu", "--results-dir", str(tmp_path / "res"),
            "--run-root", str(tmp_path / "runs"), "--no-malloc-tuning"]
    assert cli.main(argv) == 0
    assert (seen["dataset"], seen["budget"], seen["seed"]) == ("omniglot-lake28", "7", 3)
    assert str(seen["device"]) == "cpu" and seen["command"][-len(argv):] == argv
    assert cli.main(["reproduce", "--budget", "lots"]) == 2  # its parser's errors
    assert "--budget" in capsys.readouterr().err
    assert cli.main(["reproduce", "--dataset", "omniglot"]) == 2
    assert "invalid choice: 'omniglot'" in capsys.readouterr().err


def test_provenance_and_atomic_json(tmp_path):
    prov = provenance(command=["iwae-tutorial", "train"], wall_seconds=1.23456, device="cpu")
    assert PROVENANCE_KEYS <= prov.keys()
    assert prov["command"] == ["iwae-tutorial", "train"] and prov["wall_seconds"] == 1.235
    assert prov["git_commit"] == "unknown" or len(prov["git_commit"]) == 40
    assert prov["device"] == "cpu" and prov["device_name"]
    assert prov["torch_version"] == torch.__version__ and prov["torch_threads"] >= 1
    assert "hostname" not in json.dumps(prov).lower()
    target = tmp_path / "sub" / "r.json"
    write_json_atomic(target, {"nan": float("nan"), "t": torch.tensor([1.5, 2.0]),
                               "nested": [float("inf"), 1], "path": tmp_path})
    assert json.loads(target.read_text()) == {"nan": None, "t": [1.5, 2.0],
                                              "nested": [None, 1], "path": str(tmp_path)}
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text())["t"] == [1.5, 2.0]  # the old file is intact
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def mnist_available():
    if find_data_dir("mnist", MNIST_FILES) is None:
        pytest.skip("MNIST files not found (set IWAE_DATA_DIR to a folder holding mnist/); "
                    "the end-to-end CLI tests need them")


@pytest.fixture(scope="module")
def trained_run(mnist_available, tmp_path_factory):
    """The documented short run, in this process (the subprocess tests above already cover
    ``python -m iwae_tutorial``)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--dataset", "mnist", "--n-train", "400", "--epochs", "1", "--k", "5",
            "--eval-k", "50", "--eval-n", "100", "--no-progress", "--out", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    assert code == 0, stderr.getvalue()
    return out, args, stdout.getvalue()


def test_train_writes_checkpoint_and_result(trained_run):
    out, _, stdout = trained_run
    assert (out / "checkpoint.pt").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    result = json.loads((out / "result.json").read_text())
    assert RESULT_KEYS <= result.keys(), RESULT_KEYS - result.keys()
    assert result["dataset"] == "mnist" and result["n_train"] == 400
    assert result["config"]["layers"] == [[200, 200, 50]]
    assert result["config"]["objective"] == "iwae" and result["config"]["k"] == 5
    assert result["eval_k"] == 50 and result["eval_n"] == 100
    assert result["eval_n_total"] == 10_000 and "first 100" in result["eval_subset"]
    assert result["epochs"] == 1 and result["epochs_planned"] == 1
    assert result["schedule"] == {"kind": "paper", "stages": [{"epochs": 1, "lr": 1e-3}]}
    assert len(result["train_bound_per_epoch"]) == 1
    assert result["train_bound"] == result["train_bound_per_epoch"][-1]
    # after 20 steps the model is far from trained but far better than chance (543 nats)
    assert 100 < result["nll"] < 450 and math.isfinite(result["nll_stderr"])
    assert -result["train_bound"] > 100
    assert len(result["active_units"]) == 1 and 0 <= result["active_units"][0] <= 50
    assert len(result["active_units_variances"][0]) == 50 and result["active_units_n"] == 500
    assert result["wall_time_s"]["train"] > 0 and result["wall_time_s"]["eval_nll"] > 0
    prov = result["provenance"]
    assert PROVENANCE_KEYS <= prov.keys(), PROVENANCE_KEYS - prov.keys()
    assert prov["command"][:2] == ["iwae-tutorial", "train"] and "--eval-n" in prov["command"]
    assert prov["date_utc"].endswith("+00:00") and prov["device"] == result["device"]
    assert "test NLL" in stdout and "result.json" in stdout


def test_evaluate_reproduces_the_train_evaluation(trained_run, capsys, tmp_path):
    out, _, _ = trained_run
    result = json.loads((out / "result.json").read_text())
    target = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--run", str(out), "--k", "50", "--n", "100", "--no-progress",
                     "--out", str(target)]) == 0
    ev = json.loads(target.read_text())
    assert ev["eval_k"] == 50 and ev["eval_n"] == 100 and ev["dataset"] == "mnist"
    assert math.isclose(ev["nll"], result["nll"], rel_tol=0, abs_tol=1e-9)
    # the same number computed directly: -mean L_50 over the first 100 binarized test images
    model, cfg, history = load_run(out)
    assert cfg.k == 5 and len(history) == 1
    # the test images binarized once with a CPU generator of seed 0 (the eval seed)
    x_test = torch.bernoulli(load_dataset("mnist").x_test[:100],
                             generator=torch.Generator().manual_seed(0))
    ll = log_likelihood(model, x_test, 50, generator=torch.Generator().manual_seed(0))
    assert math.isclose(-float(ll.mean()), result["nll"], rel_tol=0, abs_tol=1e-6)
    assert ev["active_units"] == result["active_units"]
    assert cli.main(["evaluate", "--run", str(out), "--k", "10", "--n", "20",
                     "--no-progress"]) == 0
    default = json.loads((out / "eval.json").read_text())
    assert default["eval_k"] == 10 and default["eval_n"] == 20
    assert "test NLL" in capsys.readouterr().out


def test_rerun_resumes_and_other_config_is_refused(trained_run, capsys):
    out, args, _ = trained_run
    checkpoint = (out / "checkpoint.pt").read_bytes()
    config = (out / "config.json").read_text()
    before = json.loads((out / "result.json").read_text())
    # the same command again: nothing left to train, same model, same evaluation
    assert cli.main(args) == 0
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    after = json.loads((out / "result.json").read_text())
    assert after["train_bound_per_epoch"] == before["train_bound_per_epoch"]
    assert after["nll"] == before["nll"]
    # another k into the same directory: refused, and nothing in it changes
    other = list(args)
    other[other.index("--k") + 1] = "6"
    capsys.readouterr()
    assert cli.main(other) == 2
    assert "another configuration (k 5 there, 6 now)" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    assert (out / "config.json").read_text() == config
