"""``reproduce``: budgets, the paper's numbers, stopping/resuming, and the smoke run end to end
(on MNIST when the data is present: ``IWAE_DATA_DIR`` or the user cache)."""

import json
import subprocess
import sys

import pytest
from helpers import TINY, tiny_dataset

from iwae_tutorial import reproduce as rp
from iwae_tutorial.paper import paper_numbers

REQUIRED_CONFIG_KEYS = {"name", "objective", "k", "stochastic_layers", "nll", "eval_k", "eval_n",
                        "active_units", "train_bound", "epochs", "wall_time_s", "paper"}
REQUIRED_PROVENANCE_KEYS = {"git_commit", "torch_version", "device_name", "date_utc", "command"}


def check_result(path, dataset, budget, n_train, eval_k, eval_n):
    d = json.loads(path.read_text())
    assert d["dataset"] == dataset and d["budget"] == budget and d["status"] == "complete"
    p = d["protocol"]
    assert (p["n_train"], p["eval_k"], p["eval_n"]) == (n_train, eval_k, eval_n)
    assert p["is_paper_protocol"] is False
    assert len(d["configurations"]) == 12
    for c in d["configurations"]:
        assert REQUIRED_CONFIG_KEYS <= set(c), set(REQUIRED_CONFIG_KEYS) - set(c)
        assert c["nll"] > 0 and len(c["active_units"]) == c["stochastic_layers"]
        assert c["epochs"] == p["epochs"]
    assert REQUIRED_PROVENANCE_KEYS <= set(d["provenance"])
    return d


def test_budgets():
    assert rp.resolve_budget("smoke").n_train == 200
    assert rp.resolve_budget("full").epochs == 3280 and rp.resolve_budget("full").eval_n is None
    b = rp.resolve_budget("12")
    assert (b.name, b.epochs, b.n_train, b.eval_k) == ("12", 12, None, 5000)
    for bad in ("0", "-3", "lots"):
        with pytest.raises(ValueError):
            rp.resolve_budget(bad)


def test_paper_numbers():
    p = paper_numbers("mnist", "iwae", 50, 2)
    assert p["nll"] == 82.90 and p["active_units"] == [26, 7] and p["comparable"]
    assert paper_numbers("mnist", "vae", 1, 1)["nll"] == 86.76
    lake = paper_numbers("omniglot-lake28", "iwae", 50, 2)
    assert lake["nll"] == 103.38 and not lake["comparable"] and "different" in lake["note"]
    assert paper_numbers("omniglot-burda", "iwae", 50, 2)["comparable"]


def test_table1_markdown_stars_the_unverified_paper_numbers():
    from iwae_tutorial.results import table1_markdown

    def cell(objective, layers, k):
        return {"objective": objective, "stochastic_layers": layers, "k": k, "nll": 120.0,
                "nll_stderr": 2.0, "paper": paper_numbers("omniglot-lake28", objective, k, layers)}

    omni = {"configurations": [cell(o, 1, k) for o in ("vae", "iwae") for k in (5, 50)]}
    text = table1_markdown(omni)
    assert "(107.62, +12.38)" in text and "(104.67*, +15.33)" in text  # verified, unverified
    assert "unverified" in text.splitlines()[-1]
    mnist = {"configurations": [{**cell("vae", 1, 5),
                                 "paper": paper_numbers("mnist", "vae", 5, 1)}]}
    assert "*" not in table1_markdown(mnist) and "unverified" not in table1_markdown(mnist)


def test_stop_and_resume_gives_the_same_result(tmp_path):
    kw = dict(run_root=tmp_path / "runs", results_dir=tmp_path / "results", device="cpu",
              progress=False, ds=tiny_dataset(), eval_block=3)
    status, path = rp.reproduce("mnist", TINY, max_minutes=1e-9, **kw)
    assert status != "done" and path is None
    assert (tmp_path / "runs" / "mnist-smoke" / "fleet.pt").exists()
    status, path = rp.reproduce("mnist", TINY, **kw)
    assert status == "done"
    d = check_result(path, "mnist", "smoke", 40, 5, 6)

    # the same run in one go (fresh state) gives the same numbers
    status, path2 = rp.reproduce("mnist", TINY, **{**kw, "run_root": tmp_path / "again",
                                                   "results_dir": tmp_path / "r2"})
    d2 = json.loads(path2.read_text())
    for a, b in zip(d["configurations"], d2["configurations"]):
        assert a["nll"] == b["nll"] and a["train_bound"] == b["train_bound"]
        assert a["active_units"] == b["active_units"]


def test_smoke_end_to_end_on_mnist(tmp_path):
    from iwae_tutorial.data import DataError, load_mnist

    try:
        load_mnist(download=False)
    except DataError as e:
        pytest.skip(f"MNIST is not available here (set IWAE_DATA_DIR): {str(e)[:120]}")
    cmd = [sys.executable, "-m", "iwae_tutorial", "reproduce", "--dataset", "mnist",
           "--budget", "smoke", "--run-root", str(tmp_path / "runs"), "--results-dir",
           str(tmp_path / "results"), "--no-progress", "--no-download", "--device", "cpu",
           "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    d = check_result(tmp_path / "results" / "mnist-smoke.json", "mnist", "smoke", 200, 50, 100)
    assert d["provenance"]["command"][:4] == ["python", "-m", "iwae_tutorial", "reproduce"]
    assert "mnist-iwae-k50-2L-s0" in out.stdout


def test_fast_trainer_and_batch_are_named_in_the_protocol(tmp_path):
    kw = dict(run_root=tmp_path / "runs", results_dir=tmp_path / "res", device="cpu",
              progress=False, ds=tiny_dataset())
    status, path = rp.reproduce("mnist", TINY, batch_size=10, trainer="fast", **kw)
    assert status == "done" and path.name == "mnist-smoke-b10-fast.json"
    d = check_result(path, "mnist", "smoke", 40, 5, 6)
    p = d["protocol"]
    assert (p["batch_size"], p["trainer"], p["name"]) == (10, "fast", "mnist-smoke-b10-fast")
    assert p["lr_scale"] == pytest.approx(0.5 ** 0.5) and "counter-based" in p["noise"]
    assert d["configurations"][0]["config"]["batch_size"] == 10
    assert (tmp_path / "runs" / "mnist-smoke-b10-fast" / "fast-state" / "index.pt").exists()
    with pytest.raises(ValueError, match="trainer"):
        rp.reproduce("mnist", TINY, trainer="turbo", **kw)
