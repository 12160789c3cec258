"""``reproduce``: budgets, the paper's numbers, stopping/resuming, and the smoke run end to end
(on MNIST when the data is present: ``IWAE_DATA_DIR`` or the user cache)."""

import json
import subprocess
import sys

import pytest
from helpers import TINY, tiny_dataset

from iwae_tutorial import reproduce as rp
from iwae_tutorial.paper import paper_numbers
from iwae_tutorial.results import pack_per_image, unpack_per_image

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
    assert (tmp_path / "runs" / "mnist-smoke" / "1L" / "fleet.pt").exists()
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


def test_stages_resumed_across_boundaries_equal_an_uninterrupted_run(tmp_path):
    """Stopped after every step of training and every block of evaluation (about ten
    invocations, across the stage ends 1 and 4), the stage results equal one run's."""
    budget = rp.Budget("4", 40, 4, 5, 6, "tiny: 4 epochs, stages 1 and 4")
    kw = dict(results_dir=tmp_path / "results", device="cpu", progress=False,
              ds=tiny_dataset(), eval_block=3, two_layer_epochs=1, verbose=False)
    status, one_go = rp.reproduce("mnist", budget, run_root=tmp_path / "one", **kw)
    assert status == "done" and one_go.name == "mnist-4-2L1.json"
    ref = json.loads(one_go.read_text())
    for calls in range(1, 60):  # noqa: B007 - counted
        status, path = rp.reproduce("mnist", budget, run_root=tmp_path / "pieces",
                                    max_minutes=1e-9, **{**kw, "results_dir": tmp_path / "r2"})
        if status == "done":
            break
        partial = json.loads((tmp_path / "r2" / "mnist-4-2L1.json").read_text()) \
            if (tmp_path / "r2" / "mnist-4-2L1.json").exists() else None
        assert partial is None or partial["status"] == "partial"
    assert status == "done" and calls > 8  # it was stopped many times
    got = json.loads(path.read_text())
    assert ref["status"] == got["status"] == "complete"
    assert [s["epochs"] for s in ref["stages"]] == [1, 4]
    assert ref["protocol"]["epochs_by_layers"] == {"1L": 4, "2L": 1}
    for s_ref, s_got in zip(ref["stages"], got["stages"], strict=True):
        names = [c["name"] for c in s_ref["configurations"]]
        assert len(names) == (12 if s_ref["epochs"] == 1 else 6)
        for a, b in zip(s_ref["configurations"], s_got["configurations"], strict=True):
            assert a["name"] == b["name"] and a["epochs"] == s_ref["epochs"]
            assert a["nll"] == b["nll"] and a["train_bound"] == b["train_bound"]
            assert a["ll_per_image"] == b["ll_per_image"]
            assert a["active_units"] == b["active_units"]
            assert a["gemm"] == b["gemm"] and a["gemm"]["eval"] in ("bmm", "onednn")
            assert a["gemm"]["train"] in ("bmm", "onednn")  # the kernels, kept on resume
            ll = unpack_per_image(a["ll_per_image"])
            assert ll.shape == (6,) and abs(-ll.mean() - a["nll"]) < 5e-3
    # the IWAE with k = 1 is the VAE with k = 1, trained once
    cells = {c["name"]: c for c in ref["configurations"]}
    assert cells["mnist-iwae-k1-1L-s0"]["trained_as"] == "mnist-vae-k1-1L-s0"
    assert cells["mnist-iwae-k1-1L-s0"]["nll"] == cells["mnist-vae-k1-1L-s0"]["nll"]
    assert cells["mnist-iwae-k5-1L-s0"]["epochs"] == 4 and cells["mnist-iwae-k5-2L-s0"][
        "epochs"] == 1


def test_per_image_values_round_trip():
    import numpy as np

    ll = np.array([-87.12345, -120.5, -0.0004, -655.35])
    text = pack_per_image(ll)
    assert text.startswith("u16c:") and len(text) < 5 + 4 * 2 * 4 / 3 + 4  # 2 bytes an image
    assert np.allclose(unpack_per_image(text), ll, atol=5e-3)
    odd = np.array([-700.25, 3.5])  # an NLL over 655.35 or below 0: 4 bytes, 0.0005 nats
    assert np.allclose(unpack_per_image(pack_per_image(odd)), odd, atol=5e-4)
    with pytest.raises(ValueError):
        pack_per_image([float("nan")])


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
    assert (tmp_path / "runs" / "mnist-smoke-b10-fast" / "1L" / "fast-state" / "index.pt").exists()
    with pytest.raises(ValueError, match="trainer"):
        rp.reproduce("mnist", TINY, trainer="turbo", **kw)
