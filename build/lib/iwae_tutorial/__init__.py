"""iwae_tutorial: variational and importance weighted autoencoders (Burda et al., 2015).

Nothing is downloaded or read from disk at import time.
"""

from . import bounds, models, objectives
from .bounds import effective_sample_size, elbo, iwae_bound, log_mean_exp, normalized_weights
from .models import IWAE, bernoulli_output_bias
from .objectives import loss

__version__ = "0.1.0"

__all__ = [
    "bounds", "models", "objectives", "IWAE", "bernoulli_output_bias", "loss",
    "log_mean_exp", "iwae_bound", "elbo", "normalized_weights", "effective_sample_size",
]
