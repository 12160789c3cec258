"""``notebook.show_source`` shows the package's code in the chapters (Jupyter, Colab, the book)."""

import pytest

pytest.importorskip("IPython")

from IPython.display import Code  # noqa: E402

from iwae_tutorial import bounds, objectives  # noqa: E402
from iwae_tutorial.models import IWAE  # noqa: E402
from iwae_tutorial.notebook import show_source  # noqa: E402


def test_show_source_returns_highlighted_python():
    shown = show_source(bounds.iwae_bound)
    assert isinstance(shown, Code)
    assert "def iwae_bound" in shown.data
    assert shown.data.startswith("def iwae_bound(")
    assert "log_mean_exp(log_w, dim=dim)" in shown.data  # the body, not only the signature
    html = shown._repr_html_()  # what the book and Colab render: highlighted by pygments
    assert '<div class="highlight">' in html and '<span class="nf">iwae_bound</span>' in html


def test_show_source_of_a_method_is_dedented():
    shown = show_source(IWAE.log_weights)
    assert shown.data.startswith("def log_weights(")
    compile(shown.data, "<log_weights>", "exec")  # valid code on its own


def test_show_source_of_several_objects_and_of_a_decorated_function():
    shown = show_source(bounds.log_mean_exp, bounds.iwae_bound)
    assert shown.data.index("def log_mean_exp") < shown.data.index("def iwae_bound")
    dreg = show_source(objectives.dreg_objective).data
    assert dreg.startswith('@register("dreg")') and "def dreg_objective" in dreg
    with pytest.raises(TypeError):
        show_source()
