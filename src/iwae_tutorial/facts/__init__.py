"""The study chapters' tables and the facts their text states, read from the committed result
files (:func:`iwae_tutorial.studies.load_study`) and checked: one module per chapter.

- :mod:`.gradients`: chapters 6 and 7 (gradient estimators, power means);
- :mod:`.random_weights`: chapter 8;
- :mod:`.anomaly`: chapter 9;
- :mod:`.depth`: chapter 10 (depth, latent size, binarization, Omniglot).
"""

from .anomaly import (  # noqa: F401
    ANOMALY_SETUPS,
    LIKELIHOOD_SCORES,
    anomaly_facts,
    anomaly_rankings,
    auroc_table,
    blob_counts,
    dot_patterns,
    near_blank,
)
from .depth import (  # noqa: F401
    PAPER_FIXED_IWAE_1L,
    binarization_facts,
    binarization_table,
    budgets_table,
    depth_facts,
    depth_records,
    depth_table,
    latent_facts,
    latent_sizes,
    latent_table,
    omniglot_blank_facts,
    omniglot_facts,
    omniglot_table,
    units_above,
)
from .gradients import (  # noqa: F401
    ESTIMATOR_NAMES,
    MLMI4_POWER_NLL,
    MLMI4_RECONSTRUCTION,
    estimator_facts,
    estimator_label,
    estimator_rows,
    estimator_table,
    power_facts,
    power_of,
    power_rows,
    power_table,
    reconstruction_facts,
    reconstruction_table,
    snr_facts,
)
from .random_weights import (  # noqa: F401
    SEED_PAPER_EPOCHS,
    SEED_PAPER_RANDOM_WEIGHTS,
    random_weights_facts,
    random_weights_summary,
    random_weights_table,
)
