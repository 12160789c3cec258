"""``train.train_step``, the step the chapters show: ``fit`` takes exactly these steps, a loop
written around it reproduces ``fit`` bit for bit, and the chapters' helpers around it
(``notebook.source_line``, ``plots.camel.plot_bound_curves``) say and draw what they should."""

import pytest
import torch
from helpers import grey, seeded_model

from iwae_tutorial import train
from iwae_tutorial.plots import style

N, BATCH, K = 200, 20, 3


def test_fit_takes_its_steps_through_train_step(monkeypatch):
    calls = []
    real = train.train_step

    def counting(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("objective"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", counting)
    train.fit(seeded_model([(16, 4)], 0), grey(N), objective="iwae", k=K, epochs=2,
              batch_size=BATCH, progress=False)
    assert len(calls) == 2 * N // BATCH


@pytest.mark.parametrize("objective", ["vae", "iwae", "dreg"])
def test_a_loop_around_train_step_is_fit(objective):
    """One epoch of the loop the camel chapter writes out gives fit's weights, bit for bit."""
    x_train = grey(N)
    fitted = seeded_model([(16, 4)], 0)
    train.fit(fitted, x_train, objective=objective, k=K, epochs=1, batch_size=BATCH, seed=0,
              progress=False)

    looped = seeded_model([(16, 4)], 0)
    optimizer = train.make_optimizer(looped.parameters())
    gens = train.make_generators(0, "cpu")
    order = torch.randperm(N, generator=gens["order"])
    bounds = []
    for i in range(N // BATCH):
        x = torch.bernoulli(x_train[order[i * BATCH:(i + 1) * BATCH]], generator=gens["binarize"])
        loss, bound = train.train_step(looped, optimizer, x, objective, K, gens["noise"])
        assert loss.requires_grad is False and bound.dim() == 0
        bounds.append(float(bound))
    for (name, a), b in zip(looped.named_parameters(), fitted.parameters()):
        assert torch.equal(a, b), name
    assert all(b < 0 for b in bounds)


def test_train_step_shows_the_algorithm():
    pytest.importorskip("IPython")
    from iwae_tutorial.notebook import show_source

    code = show_source(train.train_step).data
    assert code.startswith("def train_step(")
    for part in ("loss.backward()", "optimizer.step()", "optimizer.zero_grad"):
        assert part in code, part


def test_source_line_says_where_a_model_came_from():
    from iwae_tutorial.notebook import source_line

    shipped = {"source": "the model shipped with the package, trained for 30 epochs",
               "config": {"objective": "iwae", "k": 5}, "epochs": 30, "test_nll": 90.5625,
               "test_nll_stderr": 0.78, "eval_k": 5000, "eval_n": 1000,
               "float16_minus_float32_nats": 5e-5, "train_bound": -96.4,
               "provenance": {"git_commit": "95d4ccb77bcb19fd", "date_utc": "2026-12-01T12:08"}}
    line = source_line(shipped, "IWAE")
    assert line == ("IWAE (k = 5): the model shipped with the package, trained for 30 epochs; "
                    "test NLL 90.56 ± 0.78 nats (L_5000, 1000 test points); commit 95d4ccb, "
                    "2026-12-01.")
    assert "\n" not in line and "float16" not in line
    here = {"source": "trained in this notebook", "config": {"objective": "vae", "k": 1},
            "epochs": 1, "train_bound": -1.9, "seconds": 2.4}
    assert source_line(here) == ("VAE (k = 1): trained in this notebook for 1 epoch (2 s); "
                                 "training bound in the last epoch -1.90 nats.")


def test_bound_curves_are_drawn_in_the_models_colours():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iwae_tutorial.plots import camel

    ax = camel.plot_bound_curves({"VAE: ELBO": [-3.0 + 0.01 * i for i in range(120)],
                                  "IWAE: L_20": [-2.5 + 0.01 * i for i in range(120)]})
    thick = [line for line in ax.get_lines() if line.get_label().endswith("steps")]
    assert [line.get_color() for line in thick] == [style.VAE, style.IWAE]
    assert ax.get_figure().get_size_inches()[0] <= 7
    plt.close(ax.get_figure())
