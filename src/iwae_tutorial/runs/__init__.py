"""Runs: a configuration, its name, and the directory it trains into.

- :mod:`.config`: :class:`RunConfig` (data, model, objective, budget), its one name
  (:func:`run_name`, ``mnist-iwae-k5-1L-s0``) and its seeded model (:func:`build_model`);
- :mod:`.store`: run directories (their layout, :func:`train_run`, :func:`load_run`,
  :func:`find_trained`, the shipped models, :func:`load_or_train` for the chapters).

The rest of the package uses these names only.
"""

from .config import RunConfig, build_model, layers_from_string, run_name
from .store import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EVAL_NAME,
    LOG_NAME,
    RESULT_NAME,
    SHIPPED_DIR,
    check_run_data,
    checkpoint_dirs,
    describe_source,
    find_trained,
    load_model_file,
    load_or_train,
    load_run,
    read_config,
    read_run,
    retrain_requested,
    train_run,
    write_run,
)

__all__ = ["RunConfig", "run_name", "build_model", "layers_from_string", "SHIPPED_DIR",
           "retrain_requested", "CONFIG_NAME", "CHECKPOINT_NAME", "LOG_NAME", "RESULT_NAME",
           "EVAL_NAME", "train_run", "write_run", "read_config", "load_run", "read_run",
           "check_run_data", "checkpoint_dirs", "find_trained", "load_model_file",
           "load_or_train", "describe_source"]
