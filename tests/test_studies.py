"""The study scripts behind the estimator and power-mean chapters, run end to end on a tiny
budget: their result files hold what the chapters read, and a rerun does not retrain."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from iwae_tutorial.data import DataError, Dataset, load_dataset

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def have(dataset: str) -> bool:
    try:
        load_dataset(dataset)
    except DataError:
        return False
    return True


def test_protocol_args_leave_out_where_and_how_a_study_runs():
    import argparse

    from iwae_tutorial.studies import add_run_arguments, protocol_args

    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--eval-k", type=int, default=5000)
    add_run_arguments(p, "runs/x", "results/x.json")
    args = p.parse_args(["--threads", "2", "--out", "/tmp/y.json"])
    assert (args.run_root, args.out, args.threads) == ("runs/x", "/tmp/y.json", 2)
    assert protocol_args(args) == {"epochs": 5, "eval_k": 5000}
    assert protocol_args(args, "eval_k") == {"epochs": 5}


def test_paired_difference():
    from iwae_tutorial.studies import paired_difference

    a = {"name": "a", "nll_per_image": [90.0, 100.0, 110.0, 120.0]}
    b = {"name": "b", "nll_per_image": [91.0, 100.5, 111.5, 121.0]}  # differences -1, -.5, -1.5, -1
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(-1.0)
    sd = math.sqrt(((0.0) ** 2 + 0.5 ** 2 + 0.5 ** 2 + 0.0) / 3)
    assert se == pytest.approx(sd / 2)
    assert se < 0.5  # far below either NLL's own standard error (about 6.5)
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, {"name": "c", "nll_per_image": [1.0, 2.0]})
    with pytest.raises(ValueError, match="same images"):
        paired_difference(a, {"name": "d"})


def test_study_figures_draw_what_they_are_given():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iwae_tutorial.plots import studies, style

    recs = [{"objective": o, "layers": layers, "active_units": au}
            for o, layers, au in (("vae", [[200, 200, 50]], [24]), ("iwae", [[200, 200, 50]], [48]),
                                  ("vae", [[200, 200, 100], [100, 100, 50]], [99, 8]))]
    fig = studies.plot_units_per_layer(recs)
    heights = sorted(round(b.get_height()) for b in fig.axes[0].patches)
    assert heights == sorted([50, 24, 50, 48, 100, 99, 50, 8])  # outline (size) and count
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1L: h1", "2L: h1", "2L: h2"]
    plt.close(fig)
    fig = studies.plot_variance_panels({"10 units": {"VAE": [1e-4, 0.5], "IWAE": [0.2, 0.9]},
                                        "50 units": {"VAE": [1e-3] * 5, "IWAE": [0.3] * 5}})
    assert len(fig.axes) == 2
    assert fig.axes[0].patches[0].get_edgecolor()[:3] == matplotlib.colors.to_rgb(style.VAE)
    plt.close(fig)
    models = [{"objective": "iwae", "k": 5, "train_L_k": [-100.0, -95.0, -93.0],
               "test_L_k": [-100.5, -96.0, -94.5]}]
    fig = studies.plot_train_test(models)
    assert [ln.get_linestyle() for ln in fig.axes[0].lines] == ["-", "--"]
    plt.close(fig)
    fig = studies.plot_generalisation_gap({"fixed": models})
    gap = fig.axes[0].lines[0].get_ydata()
    assert list(gap) == pytest.approx([0.5, 1.0, 1.5])
    plt.close(fig)


@pytest.mark.parametrize("part", ["power", "estimators"])
def test_objectives_study_end_to_end(part, tmp_path, capsys):
    study = script("objectives_study")
    dataset = study.PARTS[part][0]
    if not have(dataset):
        pytest.skip(f"{dataset} is not available (set IWAE_DATA_DIR)")
    out = tmp_path / "r.json"
    argv = ["--part", part, "--epochs", "1", "--n-train", "100", "--eval-n", "6",
            "--eval-k", "10", "--out", str(out), "--run-root", str(tmp_path / "runs")]
    assert study.main(argv) == 0
    r = json.loads(out.read_text())
    recs = r["configurations"]
    assert [(c["objective"], c["k"]) for c in recs] == study.PARTS[part][1]
    assert len({c["name"] for c in recs}) == len(recs)
    for c in recs:
        assert c["epochs"] == 1 and c["eval_k"] == 10 and len(c["nll_per_image"]) == 6
        assert math.isclose(c["nll"], sum(c["nll_per_image"]) / 6, abs_tol=1e-3)
        assert c["reconstruction_loss"] > 0 and c["trainer"] in ("fleet", "train.fit")
    trainers = {c["objective"]: c["trainer"] for c in recs}
    assert trainers.get("dreg", "train.fit") == "train.fit"
    assert trainers.get("iwae") == "fleet"
    assert r["provenance"]["command"][1] == "scripts/objectives_study.py"
    capsys.readouterr()
    assert study.main(argv) == 0  # finished: nothing is retrained
    assert "done already" in capsys.readouterr().err


def test_snr_study_end_to_end(tmp_path):
    if not have("mnist"):
        pytest.skip("MNIST is not available (set IWAE_DATA_DIR)")
    out = tmp_path / "snr.json"
    argv = ["--repeats", "4", "--ks", "1", "10", "--n", "2", "--objectives", "iwae", "dreg",
            "--out", str(out)]
    assert script("snr_study").main(argv) == 0
    r = json.loads(out.read_text())
    assert sorted(r["curves"]) == ["dreg", "iwae"]
    for c in r["curves"].values():
        assert len(c["network"]["encoder"]) == 2 and len(c["median"]["decoder"]) == 2
    assert r["protocol"]["model"]["file"] == "mnist-iwae-k5-1L.pt"


def test_random_weights_study_end_to_end(tmp_path, capsys):
    if not have("mnist"):
        pytest.skip("MNIST is not available (set IWAE_DATA_DIR)")
    study = script("random_weights_study")
    out = tmp_path / "rw.json"
    argv = ["--epochs", "1", "--n-train", "100", "--eval-n", "4", "--eval-k", "10",
            "--trials", "2", "--out", str(out), "--run-root", str(tmp_path / "runs")]
    assert study.main(argv) == 0
    r = json.loads(out.read_text())
    assert [m["name"] for m in r["models"]] == [
        "IWAE-s0", "IWAERrec-s0", "IWAER-s0", "IWAE-s1", "IWAERrec-s1", "IWAER-s1"]
    by = {m["name"]: m for m in r["models"]}
    assert by["IWAE-s0"]["weight_stds"] == {}
    assert set(by["IWAERrec-s0"]["weight_stds"]) == {"encoder.0.body.0", "encoder.0.mean",
                                                      "encoder.0.log_std"}
    assert "decoder.0.logits" in by["IWAER-s1"]["weight_stds"]
    for m in r["models"]:
        assert len(m["nll_per_image"]) == 4 and m["epochs"] == 1
        hist = m["weight_stds"].get("encoder.0.mean", {}).get("log10_hist")
        assert hist is None or sum(hist) == m["weight_stds"]["encoder.0.mean"]["n"]
    capsys.readouterr()
    assert study.main(argv) == 0 and "IWAE" not in capsys.readouterr().err  # nothing retrained


def test_a_class_ordered_test_split_is_sampled_evenly():
    import torch

    from iwae_tutorial.evaluate import eval_images, eval_indices, eval_subset_text

    x = torch.arange(10.0).repeat_interleave(3).view(30, 1)  # "classes" 0..9, in order
    ordered = Dataset("binarized-mnist", x, x, False, "bernoulli", test_by_class=True)
    plain = Dataset("mnist", x, x, False, "bernoulli")
    assert eval_indices(ordered, 10).tolist() == list(range(0, 30, 3))  # one per class
    assert sorted(set(eval_images(ordered, 10)[:, 0].tolist())) == list(map(float, range(10)))
    assert eval_indices(plain, 10).tolist() == list(range(10))
    assert eval_indices(ordered, None).tolist() == list(range(30))
    assert "evenly spaced" in eval_subset_text(ordered, 10)
    assert eval_subset_text(plain, 10) == "the first 10 of the 30 test images"
    assert eval_subset_text(ordered, 30) == "all test images"
    if have("binarized-mnist"):
        assert load_dataset("binarized-mnist").test_by_class
    if have("mnist"):
        assert not load_dataset("mnist").test_by_class


def test_anomaly_study_end_to_end(tmp_path):
    if not (have("mnist") and have("omniglot-lake28")):
        pytest.skip("MNIST and Omniglot lake28 are needed (set IWAE_DATA_DIR)")
    from iwae_tutorial.anomaly import SCORES
    from iwae_tutorial.results import SCHEMA

    out = tmp_path / "a.json"
    argv = ["--epochs", "1", "--n-train", "200", "--eval-n", "8", "--L", "3", "--out", str(out),
            "--run-root", str(tmp_path / "runs")]
    assert script("anomaly_study").main(argv) == 0
    r = json.loads(out.read_text())
    assert sorted(r["setups"]) == ["heldout", "omniglot"]
    for s in r["setups"].values():
        assert [(m["objective"], m["k"]) for m in s["models"]] == [
            ("vae", 5), ("iwae", 5), ("vae", 50), ("iwae", 50)]
        for m in s["models"]:
            assert m["schema"] == SCHEMA and m["epochs"] == 1  # the one result record
            assert list(m["auroc"]) == list(SCORES)
            assert all(0.0 <= v <= 1.0 for v in m["auroc"].values())
            if m["k"] == 50:
                assert len(m["scores_anomalous"]["s_iwae"]) == s["n_anomalous"] == 8
                assert sorted(m["scores_normal"]) == ["s_iwae", "s_vae"]
            else:
                assert m["scores_normal"] == {}
    assert "without the digit 1" in r["setups"]["heldout"]["trained_on"]


def test_run_names_say_non_paper_layer_sizes():
    from iwae_tutorial.runs import RunConfig, run_name

    assert RunConfig().name == "mnist-iwae-k5-1L-s0"  # the paper's layers: the names of old
    assert RunConfig(layers=[[200, 200, 100], [100, 100, 50]]).name == "mnist-iwae-k5-2L-s0"
    assert RunConfig(layers=[[200, 200, 10]], objective="vae").name == (
        "mnist-vae-k5-1L-200x200x10-s0")
    assert run_name("mnist", "power:p=2", 50, [[200, 200, 50]], 1) == "mnist-power-p2-k50-1L-s1"
    study = script("objectives_study")
    for part in ("depth", "latent"):
        names = [c.name for c in study.configs(part, 1, 100, None)]
        assert len(set(names)) == len(names) == len(study.PARTS[part][1])


def test_binarization_study_end_to_end(tmp_path):
    if not (have("mnist") and have("binarized-mnist")):
        pytest.skip("MNIST and the fixed binarization are needed (set IWAE_DATA_DIR)")
    out = tmp_path / "b.json"
    argv = ["--epochs", "2", "--n-train", "100", "--n", "10", "--k", "5", "--eval-k", "20",
            "--out", str(out), "--run-root", str(tmp_path / "runs")]
    assert script("binarization_study").main(argv) == 0
    r = json.loads(out.read_text())
    assert sorted(r["binarizations"]) == ["dynamic", "fixed"]
    for b in r["binarizations"].values():
        for m in b["models"]:
            assert len(m["train_L_k"]) == len(m["test_L_k"]) == len(m["train_bound_per_epoch"]) == 2
    assert "evenly spaced" in r["binarizations"]["fixed"]["test_images"]
    # every model scored on both test sets: the binarizations compared on the same images
    nll = r["nll"]
    assert nll["eval_k"] == 20 and sorted(nll["test_sets"]) == ["dynamic", "fixed"]
    assert sorted((m["trained_on"], m["objective"]) for m in nll["models"]) == [
        ("dynamic", "iwae"), ("dynamic", "vae"), ("fixed", "iwae"), ("fixed", "vae")]
    for m in nll["models"]:
        for test_set in ("dynamic", "fixed"):
            per_image = m["nll_per_image"][test_set]
            assert len(per_image) == 10 and all(v > 0 for v in per_image)
            assert abs(sum(per_image) / 10 - m["nll"][test_set]) < 1e-3
    # a rerun finds everything done; another --eval-k rescores the trained models and keeps
    # the provenance of the run that trained them; a missing checkpoint is named, not retrained
    assert script("binarization_study").main(argv) == 0
    assert "earlier_provenance" not in json.loads(out.read_text())
    assert script("binarization_study").main([*argv[:-4], "--eval-k", "25", *argv[-4:]]) == 0
    r2 = json.loads(out.read_text())
    assert r2["nll"]["eval_k"] == 25 and r2["binarizations"] == r["binarizations"]
    assert r2["earlier_provenance"] == [r["provenance"]]
    (tmp_path / "runs" / "fixed" / "fleet.pt").unlink()
    with pytest.raises(SystemExit, match="fleet.pt is missing"):
        script("binarization_study").main([*argv[:-4], "--eval-k", "30", *argv[-4:]])


def test_the_chapters_read_the_committed_result_files():
    """The tables and the checked facts the chapters 6-10 show, from the committed result files
    (no training): every claim of their text holds for the files as committed, and every
    table is Markdown with a one-line provenance under it."""
    from iwae_tutorial import facts, studies
    from iwae_tutorial.results import find_results, published_dir

    est = studies.load_study("estimator-study")
    assert facts.estimator_facts(est)["au_miwae"] < facts.estimator_facts(est)["au_iwae50"]
    assert facts.snr_facts(studies.load_study("snr-mnist"))["n"] >= 1
    pw = studies.load_study("power-study")
    assert facts.power_facts(pw, studies.load_study("batch-size-study"))["best_p"] == 0.5
    assert facts.reconstruction_facts(pw)["rec_gap50"] > 0
    rw = studies.load_study("random-weights-study")
    assert facts.random_weights_facts(rw)["trials"] >= 3
    lat, dep = studies.load_study("latent-study"), studies.load_study("depth-study")
    binz = studies.load_study("binarization-study")
    assert facts.latent_facts(lat)["sizes"] == [10, 20, 50, 100]
    assert facts.depth_facts(dep, lat)["depths"] == [1, 2, 3]
    assert facts.binarization_facts(binz)["cost_min"] > 0
    omni = sorted(find_results(published_dir(), dataset="omniglot-lake28"),
                  key=lambda r: r["protocol"]["epochs"])
    assert facts.omniglot_facts(omni[-1], omni[0])["epochs"] >= 40
    tables = [facts.estimator_table(est), facts.power_table(pw),
              facts.reconstruction_table(pw), facts.random_weights_table(rw),
              facts.auroc_table(studies.load_study("anomaly-study")),
              facts.latent_table(lat), facts.depth_table(dep),
              facts.binarization_table(binz), facts.omniglot_table(omni[-1]),
              facts.budgets_table(lat, dep, binz, omni[-1])]
    for t in tables:
        assert t.startswith("|") or t.startswith("**"), t[:40]
        assert "|---|" in t
    # lake28 is not the paper's data set: its table shows no gap to the paper
    assert "gap" not in facts.omniglot_table(omni[-1])
    with pytest.raises(AssertionError, match="claim does not hold"):
        facts.estimator_facts({**est, "configurations": est["configurations"][::-1][:3]})


def test_dots_and_near_blank_images():
    import numpy as np

    from iwae_tutorial.facts import blob_counts, dot_patterns, near_blank

    x = np.zeros((3, 28, 28), dtype=np.float32)
    x[0, 5, 5] = x[0, 5, 20] = x[0, 15, 5] = 1.0          # three one-pixel dots
    x[1, 3:25, 14] = 1.0                                   # a stroke of 22 pixels
    x[2, 10:12, 10:12] = 1.0                               # one dot of four pixels
    x = x.reshape(3, 784)
    assert dot_patterns(x).tolist() == [True, False, True]
    assert near_blank(x).tolist() == [True, False, True]
    assert blob_counts(x).tolist() == [3, 1, 1]


def test_the_study_figures_fit_the_column():
    """At most two panels side by side and 7 inches wide (the book's column at 100 dpi)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iwae_tutorial import facts, studies
    from iwae_tutorial.plots import studies as splots

    lat = studies.load_study("latent-study")
    by = facts.latent_sizes(lat)
    binz = studies.load_study("binarization-study")
    rw = studies.load_study("random-weights-study")
    an = studies.load_study("anomaly-study")
    figs = [splots.plot_latent_study([10, 20, 50, 100], by),
            splots.plot_variance_panels({f"{s}": {"VAE": by["vae", s]["active_units_variances"][0]}
                                         for s in (10, 20, 50, 100)}),
            splots.plot_binarization_study({n: b["models"] for n, b in
                                            binz["binarizations"].items()}, k=100),
            splots.plot_random_weight_trials(facts.random_weights_summary(rw)),
            splots.plot_weight_stds(rw["models"][:2], init_std=0.0025),
            splots.plot_roc_curves(an, facts.ANOMALY_SETUPS),
            splots.plot_score_histograms(an, facts.ANOMALY_SETUPS),
            splots.plot_framed_images(np.zeros((5, 784)), ncol=8)]
    for fig in figs:
        assert fig.get_size_inches()[0] <= 7.0 + 1e-9
        rows: dict[float, int] = {}
        for ax in fig.axes:
            if ax.get_visible():
                y = round(ax.get_position().y0, 2)
                rows[y] = rows.get(y, 0) + 1
        assert fig is figs[-1] or max(rows.values()) <= 2, rows
        plt.close(fig)


def test_batch_size_study_end_to_end(tmp_path, capsys):
    """The batch-size study writes the one layout of study files (its arguments in
    ``protocol["args"]``), and a rerun with the same arguments trains nothing."""
    if not have("mnist"):
        pytest.skip("MNIST is not available (set IWAE_DATA_DIR)")
    study = script("batch_size_study")
    out = tmp_path / "batch.json"
    argv = ["--batches", "20", "--epochs", "1", "--seeds", "0", "--ks", "5", "--n-train", "100",
            "--eval-n", "4", "--eval-k", "10", "--out", str(out),
            "--run-root", str(tmp_path / "runs")]
    assert study.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["protocol"]["args"] == {"epochs": 1, "seeds": [0], "ks": [5], "n_train": 100,
                                     "eval_k": 10, "eval_n": 4}
    recs = r["by_batch"]["20"]["configurations"]
    assert [(c["objective"], c["k"], c["epochs"], c["eval_n"]) for c in recs] == [
        ("vae", 5, 1, 4), ("iwae", 5, 1, 4)]
    capsys.readouterr()
    assert study.main(argv) == 0 and "batch 20: done already" in capsys.readouterr().err


def test_study_files_read_in_one_layout():
    """Every committed study file reads with its arguments in ``protocol["args"]``, those
    written before that layout included (studies.current_layout), and the layout's reader
    leaves a file in it unchanged."""
    from iwae_tutorial import studies

    names = [p.stem for p in sorted((ROOT / "results").glob("*.json"))
             if "study" in json.loads(p.read_text())
             or p.stem in ("batch-size-study", "estimator-bias", "one-epoch-lr")]
    assert {"batch-size-study", "estimator-bias", "one-epoch-lr", "power-study"} <= set(names)
    for name in names:
        s = studies.load_study(name, ROOT / "results")
        assert isinstance(s["protocol"]["args"], dict) and s["protocol"]["args"], name
        assert studies.current_layout(s, name) == s, name
    old = {"study": "batch-size", "protocol": {"epochs": 20, "eval_n": 2000, "device": "cpu"}}
    assert studies.current_layout(old, "batch-size-study")["protocol"] == {
        "args": {"epochs": 20, "eval_n": 2000}, "device": "cpu"}
