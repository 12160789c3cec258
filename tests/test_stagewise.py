"""Table 1 stage by stage: reading the stage-wise file, paired differences, verdicts, figures."""

import json

import numpy as np
import pytest
from helpers import tiny_dataset

from iwae_tutorial import reproduce as rp
from iwae_tutorial import stagewise as sw
from iwae_tutorial.paper import paper_numbers
from iwae_tutorial.results import pack_per_image


def record(obj, layers, k, nll_per_image, epochs=4):
    nll = np.asarray(nll_per_image, dtype=float)
    return {"name": f"mnist-{obj}-k{k}-{layers}L-s0", "objective": obj, "k": k,
            "stochastic_layers": layers, "layers": [[200, 200, 50]] * layers, "seed": 0,
            "epochs": epochs, "nll": float(nll.mean()),
            "nll_stderr": float(nll.std(ddof=1) / len(nll) ** 0.5),
            "ll_per_image": pack_per_image(-nll), "eval_seed": 0,
            "active_units": [20] * layers, "active_units_variances": [[0.5] * 20] * layers}


def table(shift_iwae, noise=0.0, epochs=(1, 4)):
    """12 cells on 400 images whose difficulty varies a lot; the IWAE's NLL is the VAE's plus
    ``shift_iwae`` (plus independent per-image noise)."""
    rng = np.random.default_rng(0)
    base = 90 + 20 * rng.standard_normal(400)
    stages = []
    for e in epochs:
        cfgs = []
        for layers in (1, 2):
            for k, dk in ((1, 0.0), (5, -0.5), (50, -1.0)):
                vae = base + dk + 10 / e
                cfgs.append(record("vae", layers, k, vae, e))
                iw = vae if k == 1 else vae + shift_iwae + noise * rng.standard_normal(400)
                cfgs.append(record("iwae", layers, k, iw, e))
        stages.append({"epochs": e, "configurations": cfgs})
    return {"dataset": "mnist", "protocol": {"paper_epochs": 3280, "name": "t"},
            "stages": stages}


def write(tmp_path, t):
    p = tmp_path / "mnist-t.json"
    p.write_text(json.dumps(t))
    return sw.load_stagewise(p)


def test_paired_error_is_far_smaller_than_the_cells_own(tmp_path):
    t = write(tmp_path, table(-0.3, noise=0.5))
    cells = sw.stage_cells(t, 4)
    d, se = sw.paired_gap(cells[("iwae", 1, 5)], cells[("vae", 1, 5)])
    assert d == pytest.approx(-0.3, abs=0.1) and se < 0.05
    assert cells[("vae", 1, 5)]["nll_stderr"] > 10 * se


@pytest.mark.parametrize("shift, verdict", [(-0.5, "holds"), (0.5, "not yet"), (0.0, "undecided")])
def test_verdicts_follow_the_95_percent_interval(tmp_path, shift, verdict):
    t = write(tmp_path, table(shift, noise=0.5))
    got = {c["k"]: c["verdict"] for c in sw.claims(t, 1) if c["claim"] == "iwae_beats_vae"}
    assert got == {5: verdict, 50: verdict}
    text = sw.verdict_markdown(t)
    assert text.startswith("> ") and "after 4 of 3,280 epochs" in text
    diffs = sw.differences_markdown(t)
    lines = diffs.splitlines()
    assert len(lines) == 2 + 2 * 2 * 2  # header, then layers x stages x k
    assert any(row.startswith("| 1 | 4 | 50 |") and row.endswith(f"| {verdict} |")
               for row in lines)
    more = [c for c in sw.claims(t, 2) if c["claim"] == "more_samples_help"]
    assert len(more) == 4 and all(c["verdict"] == "holds" for c in more if c["objective"] ==
                                  "vae")


def test_paper_differences_and_gaps_come_from_the_paper(tmp_path):
    t = write(tmp_path, table(-0.5))
    c = next(c for c in sw.claims(t, 1) if c["claim"] == "iwae_beats_vae" and c["k"] == 50)
    assert c["paper_diff"] == pytest.approx(paper_numbers("mnist", "iwae", 50, 1)["nll"]
                                            - paper_numbers("mnist", "vae", 50, 1)["nll"])
    lo, hi = sw.gap_range(t, 1, 4)
    assert lo < hi and "| VAE 1L k = 50 | 4 |" in sw.gaps_markdown(t)
    lo2, hi2 = sw.gap_range(t, 2, 4)  # each number of layers against its own paper numbers
    assert (lo2, hi2) != (lo, hi)
    assert f"{lo:.2f} to {hi:.2f}" in sw.verdict_markdown(t)
    assert f"{lo2:.2f} to {hi2:.2f}" in sw.verdict_markdown(t)


def test_a_file_that_is_not_stage_wise_is_refused_in_one_line(tmp_path):
    p = tmp_path / "mnist-x.json"
    p.write_text(json.dumps({"dataset": "mnist", "configurations": []}))
    with pytest.raises(ValueError, match="no scored stages") as err:
        sw.load_stagewise(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)
    assert sw.find_stagewise(tmp_path) is None


def test_a_real_tiny_run_reads_back_and_draws(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from iwae_tutorial.plots import stagewise as plots

    budget = rp.Budget("4", 40, 4, 5, 6, "tiny")
    status, path = rp.reproduce("mnist", budget, run_root=tmp_path / "runs",
                                results_dir=tmp_path / "res", device="cpu", progress=False,
                                ds=tiny_dataset(), two_layer_epochs=1, verbose=False)
    t = sw.find_stagewise(tmp_path / "res")
    assert t is not None and sw.stage_epochs(t) == [1, 4]
    assert (sw.furthest_stage(t, 1), sw.furthest_stage(t, 2)) == (4, 1)
    assert set(sw.seconds_per_epoch(t)) == {"1L", "2L"}
    for fn in (plots.plot_convergence, plots.plot_paired_gaps, plots.plot_active_units,
               plots.plot_unit_variances_by_stage):
        fig = fn(t)
        w, _ = fig.get_size_inches()
        assert w <= 7.0 and len(fig.axes) <= 4  # fits the column: two panels a row
    assert "undecided" in sw.units_markdown(t)


def test_stage_training_is_what_seconds_per_epoch_averages():
    from iwae_tutorial.results import published_dir

    t = sw.find_stagewise(published_dir(), "mnist")  # the committed table: real stage times
    assert t is not None
    stages = sw.stage_training(t)
    assert set(stages) == set(sw.seconds_per_epoch(t))
    for part, rows in stages.items():
        ends = [e for e, _, _ in rows]
        assert ends == sorted(ends) and sum(n for _, n, _ in rows) == ends[-1]
        assert all(secs > 0 for _, _, secs in rows)
        paces = [secs / n for _, n, secs in rows]
        assert min(paces) <= sw.seconds_per_epoch(t)[part] <= max(paces)
        wall = sum(st["wall_time_s"][part]["train"] for st in t["stages"]
                   if part in st["wall_time_s"])
        assert sw.seconds_per_epoch(t)[part] == pytest.approx(wall / ends[-1], rel=1e-12)
