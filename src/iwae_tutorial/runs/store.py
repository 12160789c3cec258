"""Run directories: the one place that knows their layout (write, find, load).

A run directory holds one trained model::

    DIR/config.json     the RunConfig (JSON)
    DIR/checkpoint.pt   model weights and model_config, per-epoch history; while training also
                        the optimizer, the random generators' states and a fingerprint
    DIR/log.jsonl       one line per epoch (repaired from the checkpoint on resume)
    DIR/result.json     what ``train`` measured; DIR/eval.json what ``evaluate`` measured
    DIR/.lock           held by the process working in DIR (a plain file, never a link)
    DIR/.iwae-tutorial-run  the marker: DIR is this package's (integrity.claim_run_dir)

:func:`train_run` trains one into it (resumable), :func:`write_run` writes a model trained
elsewhere (the fleet's members), :func:`load_run` reads one back, and :func:`find_trained`
looks for a trained model of a configuration (for the chapters: :func:`load_or_train`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import CheckpointError, RunDirLock, save_tensors, write_json_atomic
from ..data import Dataset, load_dataset
from ..integrity import (
    check_config_matches,
    check_finite_weights,
    check_history,
    check_model_config,
    check_rng,
    claim_run_dir,
)
from ..models import IWAE
from ..results import current_keys
from ..schedule import schedule_epochs
from ..session import LOG_NAME, RESTART_FIX, check_state, data_digest
from ..train import (
    CHECKPOINT_NAME,
    fit,
    load_checkpoint,
)
from .config import RunConfig, build_model

__all__ = ["SHIPPED_DIR", "retrain_requested", "CONFIG_NAME", "CHECKPOINT_NAME", "LOG_NAME",
           "RESULT_NAME", "EVAL_NAME", "train_run", "write_run", "read_config", "load_run",
           "read_run", "check_run_data", "checkpoint_dirs", "find_trained", "load_model_file",
           "load_or_train", "describe_source"]

#: the trained models that ship with the package (scripts/train_shipped_models.py)
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "trained"
CONFIG_NAME = "config.json"
RESULT_NAME = "result.json"
EVAL_NAME = "eval.json"


def train_run(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    *,
    device: torch.device | str | None = None,
    ds: Dataset | None = None,
    progress: bool = True,
    restart: bool = False,
) -> tuple[IWAE, list[dict]]:
    """Train ``cfg`` (resuming from ``run_dir`` if it holds a checkpoint of it; ``restart``
    deletes that run first).

    ``run_dir`` also receives ``config.json``. Returns (model in eval mode, per-epoch log).
    """
    from ..profiles import default_device

    device = torch.device(device) if device is not None else default_device()
    ds = ds if ds is not None else load_dataset(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg, ds, device)
    x_train = ds.x_train if cfg.n_train is None else ds.x_train[: cfg.n_train]
    if run_dir is None:
        history = fit(model, x_train, objective=cfg.objective, k=cfg.k,
                      schedule=cfg.schedule(), batch_size=cfg.batch_size, seed=cfg.seed,
                      binarize=ds.binarize, progress=progress)
        return model, history
    if str(run_dir).strip() == "":
        raise ValueError("--out is empty; name a run directory, e.g. --out runs/my-run")
    run_dir = Path(run_dir)
    with RunDirLock(run_dir, "--out"):  # held through fit (which takes it again)
        claim_run_dir(run_dir, "--out", (CHECKPOINT_NAME,))  # ours, or refused: before --restart
        if restart:
            for name in (CHECKPOINT_NAME, LOG_NAME, CONFIG_NAME, RESULT_NAME, EVAL_NAME):
                (run_dir / name).unlink(missing_ok=True)
        _check_run_dir(run_dir, cfg)
        write_json_atomic(run_dir / CONFIG_NAME, asdict(cfg))
        history = fit(model, x_train, objective=cfg.objective, k=cfg.k,
                      schedule=cfg.schedule(), batch_size=cfg.batch_size, seed=cfg.seed,
                      binarize=ds.binarize, run_dir=run_dir, progress=progress)
    return model, history


def _check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Before anything is written: a run directory holding a run of another configuration, or
    one already past ``cfg.epochs``, is refused (one line naming what differs)."""
    cfg_path, ckpt_path = run_dir / CONFIG_NAME, run_dir / CHECKPOINT_NAME
    if not ckpt_path.exists():
        return
    if cfg_path.exists():
        old = read_config(cfg_path)
        changed = sorted(key for key, value in asdict(cfg).items()
                         if key != "epochs" and getattr(old, key) != value)
        if changed:  # only the number of epochs may change when a run is continued
            new = asdict(cfg)
            diff = ", ".join(f"{c} {getattr(old, c)!r} there, {new[c]!r} now" for c in changed)
            raise ValueError(f"{run_dir} holds a run of another configuration ({diff}); "
                             f"use another run directory (--out), or {RESTART_FIX}")
    state, fix = load_checkpoint(ckpt_path), f"delete it, or {RESTART_FIX}"
    check_state(state, ("model", "optimizer", "rng", "epoch", "history"), ckpt_path)
    done = len(check_history(state["history"], ckpt_path, epoch=state["epoch"], fix=fix))
    check_rng(state["rng"], ("order", "binarize", "noise"), ckpt_path, fix=fix)
    planned = schedule_epochs(cfg.schedule())
    if done > planned:
        raise ValueError(f"{run_dir} holds a run of {done} epochs, more than the {planned} "
                         f"asked for; ask for at least {done} (--epochs {done}), use another "
                         f"run directory (--out), or {RESTART_FIX}")


def read_config(path: str | Path) -> RunConfig:
    """The :class:`RunConfig` in a run directory's ``config.json``, with one clear error when
    the file is unreadable, not JSON, or has unknown or malformed keys."""
    path = Path(path)
    fix = "restore it from the run that wrote it, or delete the run directory"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path.parent} holds no config.json: is it a run "
                                "directory written by train?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no JSON object; {fix}")
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{path} has unknown key(s) {', '.join(unknown)} (known: "
                              f"{', '.join(sorted(known))}); {fix}")
    try:
        return RunConfig(**raw)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is malformed ({e}); {fix}") from None


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[IWAE, RunConfig,
                                                                                list[dict]]:
    """The trained model, its config and its log from a run directory written by train_run
    (checked as :func:`read_run` does)."""
    model, cfg, history, _ = read_run(run_dir, device)
    return model, cfg, history


def read_run(run_dir: str | Path, device: torch.device | str = "cpu"
             ) -> tuple[IWAE, RunConfig, list[dict], dict]:
    """:func:`load_run`, and the checkpoint's metadata (everything but the weights, the
    optimizer and the generators: ``model_config``, ``fingerprint``, ...).

    The checkpoint is the truth about the model: its ``model_config`` and history are
    checked, its weights must be finite, and ``config.json`` must describe it
    (:func:`iwae_tutorial.integrity.check_config_matches`); else one line naming the file."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir / CONFIG_NAME)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if not ckpt_path.exists():
        raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT_NAME}: it is no trained run "
                                "(train writes it after the first epoch); give the folder "
                                "train --out wrote, or train it first")
    state = load_checkpoint(ckpt_path, map_location=device)
    check_state(state, ("model", "model_config", "history"), ckpt_path)
    fix = "delete the run directory or train it again"
    mc = check_model_config(state["model_config"], ckpt_path, fix=fix)
    history = check_history(state["history"], ckpt_path, epoch=state.get("epoch"), fix=fix)
    check_config_matches(cfg, state, run_dir / CONFIG_NAME, ckpt_path)
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"the checkpoint {ckpt_path} holds no weights; {fix}")
    check_finite_weights(state["model"], ckpt_path)
    try:
        model = IWAE(mc["x_dim"], mc["layers"], likelihood=mc["likelihood"]).to(device)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint {ckpt_path} does not hold a model this package "
                              f"can build ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:160]}); {fix}") from None
    model.eval()
    meta = {key: v for key, v in state.items()
            if key not in ("model", "optimizer", "rng", "orders", "bound_sum", "first_bad")}
    return model, cfg, history, meta


def check_run_data(run_dir: str | Path, meta: dict, ds: Dataset) -> None:
    """The data set ``ds`` (named by ``config.json``) must be the one the model of ``run_dir``
    was trained on: the size and likelihood of its data points (the checkpoint's
    ``model_config``) and, where the checkpoint has a fingerprint, its training images.
    ``meta``: from :func:`read_run`. Else one line naming the files and the fix."""
    run_dir = Path(run_dir)
    ckpt, cfg_path = run_dir / CHECKPOINT_NAME, run_dir / CONFIG_NAME
    fix = (f"the checkpoint is the truth: restore {cfg_path} to the data set it was trained "
           "on, or delete the run directory and train it again")
    mc = meta.get("model_config", {})
    if mc.get("x_dim") != ds.x_dim or mc.get("likelihood", "bernoulli") != ds.likelihood:
        raise CheckpointError(
            f"the model in {ckpt} is of data points of {mc.get('x_dim')} values "
            f"({mc.get('likelihood')}), {ds.name} has {ds.x_dim} ({ds.likelihood}): "
            f"{cfg_path} names another data set than it was trained on; {fix}")
    fp = meta.get("fingerprint")
    if isinstance(fp, dict) and isinstance(fp.get("data"), str) and isinstance(fp.get("n"), int):
        n = fp["n"]
        if n > ds.x_train.shape[0] or data_digest(ds.x_train[:n]) != fp["data"]:
            raise CheckpointError(f"the model in {ckpt} was not trained on the first {n} "
                                  f"training images of {ds.name}; {fix}")


def write_run(directory: str | Path, model: IWAE, cfg: RunConfig | None,
              history: Sequence[dict], **meta: Any) -> Path:
    """Write a model trained elsewhere (e.g. a member of the fleet) as a run directory that
    :func:`load_run` reads: ``checkpoint.pt`` (weights, model_config, history, ``meta``) and,
    when ``cfg`` is given, ``config.json``. Returns the directory."""
    directory = Path(directory)
    model = model.to("cpu")
    save_tensors(directory / CHECKPOINT_NAME, {
        "model": model.state_dict(), "model_config": model.config,
        "history": list(history), "epoch": len(history), **meta})
    if cfg is not None:
        write_json_atomic(directory / CONFIG_NAME, asdict(cfg))
    return directory


def retrain_requested() -> bool:
    """Whether the chapters should train live instead of loading the shipped models
    (``IWAE_RETRAIN=1``; ``scripts/test.sh`` sets it for the notebooks' smoke run, so the
    chapters' training code is tested too)."""
    return os.environ.get("IWAE_RETRAIN", "") not in ("", "0")


def checkpoint_dirs(root: str | os.PathLike[str] | None = None,
                    shipped: bool = True) -> list[Path]:
    """Where trained models are looked for, in order: ``root``, ``$IWAE_CHECKPOINT_DIR``, then
    the models shipped with the package (:data:`SHIPPED_DIR`, when ``shipped``); the folders
    that exist."""
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("IWAE_CHECKPOINT_DIR"):
        dirs.append(Path(os.environ["IWAE_CHECKPOINT_DIR"]))
    if shipped:
        dirs.append(SHIPPED_DIR)
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _candidates(d: Path) -> list[tuple[Path, dict]]:
    """(weights file, metadata) pairs in one checkpoint directory.

    Two layouts: ``NAME.pt`` next to ``NAME.json``; or a run directory ``NAME/`` written by
    :func:`train_run` (``config.json`` and ``checkpoint.pt``, with an
    optional ``metadata.json``).
    """
    out = []
    for meta_path in sorted(d.glob("*.json")):
        weights = meta_path.with_suffix(".pt")
        meta = _read_json(meta_path)
        if weights.exists() and meta is not None:  # as written (old files: old keys)
            out.append((weights, {**meta, "metadata_file": str(meta_path)}))
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        weights, cfg = sub / CHECKPOINT_NAME, _read_json(sub / CONFIG_NAME)
        if weights.exists() and cfg is not None:
            meta = _read_json(sub / "metadata.json") or {}
            out.append((weights, {"config": cfg, **meta, "metadata_file": str(sub)}))
    return out


def _config_of(meta: dict) -> dict:
    """The run configuration inside a metadata dict (top level or under "config")."""
    cfg = meta.get("config")
    return cfg if isinstance(cfg, dict) else meta


def _matches(meta: dict, dataset: str, objective: str, k: int,
             layers: Sequence[Sequence[int]], seed: int | None = None) -> bool:
    cfg = _config_of(meta)
    try:
        return (cfg.get("dataset", "mnist") == dataset and cfg.get("objective") == objective
                and int(cfg.get("k")) == int(k)
                and [list(map(int, s)) for s in cfg.get("layers")] ==
                [list(map(int, s)) for s in layers]
                and (seed is None or int(cfg.get("seed", 0)) == int(seed)))
    except (TypeError, ValueError):
        return False


def find_trained(dataset: str, objective: str, k: int, layers: Sequence[Sequence[int]],
                 root: str | os.PathLike[str] | None = None, seed: int | None = None,
                 shipped: bool = True) -> tuple[Path, dict] | None:
    """The first trained model in :func:`checkpoint_dirs` whose metadata names this dataset,
    objective, k and architecture (and ``seed``, when given), as (weights path, metadata);
    None if there is none.

    The metadata is a JSON object holding the run configuration (``dataset``, ``objective``,
    ``k``, ``layers``, ...) at its top level or under ``"config"``; other fields (epochs,
    test log-likelihood, commit, ...) are passed through for display.
    """
    for d in checkpoint_dirs(root, shipped=shipped):
        for weights, meta in _candidates(d):
            if _matches(meta, dataset, objective, k, layers, seed):
                return weights, {**meta, "weights_file": str(weights)}
    return None


def load_model_file(path: str | os.PathLike[str],
                    device: torch.device | str = "cpu") -> IWAE:
    """Rebuild an :class:`IWAE` from a ``.pt`` file holding ``model_config`` and the weights
    (under ``model`` as written by training, or ``state_dict``; float16 weights, as shipped,
    are read back as float32)."""
    state = load_checkpoint(path, map_location=device)
    mc = state.get("model_config")
    weights = state.get("model", state.get("state_dict"))
    if mc is None or weights is None:
        raise ValueError(f"{path} holds no 'model_config' and 'model'/'state_dict' entries")
    model = IWAE(mc["x_dim"], mc["layers"], likelihood=mc.get("likelihood", "bernoulli"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in weights.items()})
    return model.to(device).eval()


def load_or_train(cfg: Any, device: torch.device | str | None = None, *, ds: Any = None,
                  root: str | os.PathLike[str] | None = None,
                  use_checkpoint: bool | None = None, progress: bool = True,
                  match_seed: bool = False) -> tuple[IWAE, dict]:
    """A trained model for ``cfg`` (an :class:`iwae_tutorial.runs.RunConfig`): the
    matching model in :func:`checkpoint_dirs` when there is one (see :func:`find_trained`;
    the package ships the chapters' models), else one trained now with ``cfg``'s budget.
    ``use_checkpoint`` defaults to ``not retrain_requested()`` (``IWAE_RETRAIN=1`` trains
    live); ``match_seed`` also requires ``cfg.seed``.

    Returns (model in eval mode, info), where ``info["source"]`` says which it was and the rest
    of ``info`` is the checkpoint's metadata or the configuration and training log.
    """
    from ..profiles import default_device

    device = torch.device(device) if device is not None else default_device()
    if use_checkpoint is None:
        use_checkpoint = not retrain_requested()
    if use_checkpoint:
        found = find_trained(cfg.dataset, cfg.objective, cfg.k, cfg.layers, root,
                             seed=cfg.seed if match_seed else None)
        if found is not None:
            path, meta = found
            where = ("the model shipped with the package" if path.parent == SHIPPED_DIR
                     else f"checkpoint {path}")
            epochs = meta.get("epochs")
            source = where + (f", trained for {epochs} epochs" if epochs else "")
            asked = getattr(cfg, "epochs", None)
            if epochs and asked is not None and int(asked) != int(epochs):
                source += f" (not the {asked} this configuration would train here)"
            model = load_model_file(path, device)
            _check_found(model, path, meta, cfg, ds)
            return model, {"source": source, **meta}
    model, history = train_run(cfg, device=device, ds=ds, progress=progress)
    return model, {"source": "trained in this notebook", "config": asdict(cfg),
                   "epochs": len(history),
                   "train_bound": history[-1]["train_bound"] if history else None,
                   "seconds": sum(h["seconds"] for h in history)}


def _check_found(model: IWAE, path: Path, meta: dict, cfg: Any, ds: Any) -> None:
    """The model :func:`find_trained` found for ``cfg`` must be what its metadata says: its
    weights of ``cfg.layers`` (and of ``ds``'s data size, when given), and, where the file
    has a training fingerprint, trained with ``cfg``'s objective and k."""
    where = meta.get("metadata_file", path)
    have = [[int(v) for v in s] for s in model.config["layers"]]
    diffs = []
    if have != [[int(v) for v in s] for s in cfg.layers]:
        diffs.append(f"layers {have}, not {[list(s) for s in cfg.layers]}")
    if ds is not None and getattr(ds, "x_dim", model.x_dim) != model.x_dim:
        diffs.append(f"data points of {model.x_dim} values, not {ds.x_dim}")
    fp = load_checkpoint(path).get("fingerprint") if path.suffix == ".pt" else None
    if isinstance(fp, dict):
        diffs += [f"{key} {fp[key]!r}, not {mine!r}" for key, mine in
                  (("objective", cfg.objective), ("k", cfg.k)) if key in fp and fp[key] != mine]
    if diffs:
        raise CheckpointError(f"{path} holds a model that does not match its metadata {where} "
                              f"({'; '.join(diffs)}); delete or fix those files, or train "
                              "anew (IWAE_RETRAIN=1)")


#: metadata fields describe_source leaves out (local file paths, long per-epoch data)
_NOT_SHOWN = ("source", "history", "metadata_file", "weights_file", "wall_time_s", "config",
              "provenance", "name", "storage", "nll_float32", "eval_n_total", "schema",
              "train_bound_per_epoch", "paper", "gap_to_paper_nll")


def describe_source(info: dict, width: int = 110) -> str:
    """A few readable lines saying where a model from :func:`load_or_train` came from: the
    source; for a stored model its test NLL and how it was scored, and who trained it (command,
    commit, date, device); then the remaining metadata fields (local file paths and the
    per-epoch history left out, long values cut)."""
    info = current_keys(info)  # files written before the one schema: its keys
    lines = [str(info.get("source", "unknown source"))]
    if info.get("nll") is not None:
        se = info.get("nll_stderr")
        lines.append(f"    test NLL {info['nll']:.3f}" + (f" +- {se:.3f}" if se else "")
                     + f" nats (L_{info.get('eval_k')}, {info.get('eval_subset')})")
    prov = info.get("provenance")
    if isinstance(prov, dict):
        cmd = prov.get("command")
        cmd = " ".join(cmd) if isinstance(cmd, list) else cmd
        dirty = " (with uncommitted changes)" if prov.get("git_dirty") else ""
        lines.append(f"    trained by `{cmd}` at commit {str(prov.get('git_commit'))[:12]}"
                     f"{dirty}, {str(prov.get('date_utc', '?'))[:10]}, on "
                     f"{prov.get('device_name', prov.get('device', '?'))}")
    for key, value in info.items():
        if key in _NOT_SHOWN or key in ("nll", "nll_stderr", "eval_k", "eval_subset"):
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str,
                                                                separators=(", ", "="))
        text = text.replace('"', "")
        if len(text) > width:
            text = text[:width - 3] + "..."
        lines.append(f"    {key}: {text}")
    return "\n".join(lines)
