"""The one home of the figures' colours: every plotting module and every chapter takes its
colours from here, so that a model kind looks the same in every figure of the book.

One colour per kind of curve:

- :data:`VAE` (orange) and :data:`IWAE` (blue): the two models, and their bounds (the
  k-sample ELBO is the VAE's objective, L_k the IWAE's); the other estimators of the
  gradient-estimator chapter have one colour each (:data:`STL`, :data:`DREG`, :data:`MIWAE`,
  :data:`CIWAE`, :data:`PIWAE`), the random-weights models two of their own (:data:`IWAER`,
  :data:`IWAER_REC`), reweighted wake-sleep one (:data:`RWS`); a family ordered by a number
  (the power bounds by p) takes :data:`SEQUENCE_CMAP`;
- :data:`TRUTH` (black): what is known exactly: log p(x), the true density, the true
  posterior drawn as a line; :data:`TRUTH_FILL` (grey) the true posterior as a filled area;
- :data:`POOR_Q` (red) and :data:`GOOD_Q` (green): the two hand-set recognition models of the
  first chapter;
- :data:`DATA` (light grey): training data; :data:`REFERENCE` (black, thin lines): reference
  values such as 1/k, zero or a threshold; :data:`ON_DARK` (white): lines drawn on the dark
  picture of a posterior; :data:`OTHER` (dark grey): a model that is neither VAE nor IWAE;
  :data:`CHECK` (grey): a quantity computed by hand to check another; :data:`HIGHLIGHT` (red):
  a frame that singles out items among others (anomalies among ranked images).

The values are matplotlib's default ``tab10`` colours written out, so they do not change with
the colour cycle (``axes.prop_cycle``). The colour maps of the image-like figures are here too.
"""

from __future__ import annotations

import re

__all__ = [
    "VAE", "IWAE", "STL", "DREG", "MIWAE", "CIWAE", "PIWAE", "IWAER", "IWAER_REC", "RWS",
    "MODEL_COLORS", "model_color",
    "TRUTH", "TRUTH_FILL", "POOR_Q", "GOOD_Q", "DATA", "REFERENCE", "ON_DARK", "OTHER", "CHECK",
    "HIGHLIGHT",
    "TRUTH_LINE", "IMAGE_CMAP", "POSTERIOR_CMAP", "CLASS_CMAP", "SEQUENCE_CMAP",
]

#: the VAE (and its objective, the k-sample ELBO): matplotlib's "C1"
VAE = "#ff7f0e"
#: the IWAE (and its bound L_k): matplotlib's "C0"
IWAE = "#1f77b4"
#: the estimators and bounds of the chapter on gradient estimators (tab10's C4-C9)
STL, DREG, MIWAE, CIWAE, PIWAE = "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"
#: the IWAE with random weights in both networks (IWAER) and in the recognition network only
#: (IWAERrec): two darker shades of the IWAE's blue (tab20b)
IWAER, IWAER_REC = "#393b79", "#6b6ecf"
#: reweighted wake-sleep (Bornschein & Bengio, 2015): an olive green (tab20b)
RWS = "#637939"
#: one colour per model kind, keyed by the name the chapters give the models
MODEL_COLORS: dict[str, str] = {"VAE": VAE, "IWAE": IWAE, "STL": STL, "DREG": DREG,
                                "MIWAE": MIWAE, "CIWAE": CIWAE, "PIWAE": PIWAE,
                                "IWAER": IWAER, "IWAERREC": IWAER_REC, "RWS": RWS}

#: exact quantities drawn as lines: log p(x), the true density, the true posterior
TRUTH = "#000000"
#: the true posterior drawn as a filled area
TRUTH_FILL = "#999999"
#: the first chapter's poor recognition model q(z | x) ("C3")
POOR_Q = "#d62728"
#: the first chapter's good recognition model q(z | x) ("C2")
GOOD_Q = "#2ca02c"
#: training data shown behind the curves
DATA = "#d9d9d9"
#: reference lines: 1/k, zero, a threshold, a target value
REFERENCE = "#000000"
#: lines drawn on the dark picture of a posterior (q's contours, an inset's frame)
ON_DARK = "#ffffff"
#: a model that is neither a VAE nor an IWAE (another objective)
OTHER = "#555555"
#: a quantity computed by hand to check another (e.g. a gradient summed from its terms)
CHECK = "#7f7f7f"
#: what singles out some items among others (the anomalies among ranked images)
HIGHLIGHT = "#d62728"

#: how an exact curve (true density, true posterior) is drawn among the models' curves
TRUTH_LINE: dict = {"color": TRUTH, "lw": 2.5, "ls": "--"}

#: images (digits, dark ink on white)
IMAGE_CMAP = "gray"
#: the true posterior on a grid of z
POSTERIOR_CMAP = "magma"
#: the digit classes 0-9
CLASS_CMAP = "tab10"
#: an ordered family of curves (e.g. one histogram per k)
SEQUENCE_CMAP = "viridis"


def model_color(name: str, default: str | None = None) -> str | None:
    """The colour of the model kind a name or label starts with, whatever its case: "VAE",
    "iwae", "IWAE k=50", "VAE, 2 layers" -> :data:`VAE` or :data:`IWAE`; ``default`` for
    any other name."""
    first = re.split(r"[\s,:;=_(-]+", name.strip(), maxsplit=1)[0]
    return MODEL_COLORS.get(first.upper(), default)
