"""One configuration, end to end: which data, which model, which objective, how long.

The CLI (``python -m iwae_tutorial train``), the chapters and the reproduction scripts all go
through :func:`train_run` and :func:`load_run`, so a model is built, seeded and trained the
same way wherever it comes from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from .checkpoints import CheckpointError, RunDirLock, write_json_atomic
from .models import IWAE, bernoulli_output_bias
from .schedule import Stage, burda_schedule, schedule_epochs, truncate_schedule
from .train import CHECKPOINT_NAME, LOG_NAME, RESTART_FIX, check_state, fit, load_checkpoint

__all__ = ["RunConfig", "Dataset", "load_dataset", "build_model", "train_run", "load_run",
           "DATASETS", "ONE_LAYER", "TWO_LAYERS", "layers_from_string", "eval_images",
           "read_config"]

#: The paper's architectures.
ONE_LAYER: list[tuple[int, ...]] = [(200, 200, 50)]
TWO_LAYERS: list[tuple[int, ...]] = [(200, 200, 100), (100, 100, 50)]

DATASETS = ("mnist", "binarized-mnist", "omniglot-lake28", "omniglot-burda", "camel")


@dataclass
class Dataset:
    """Training and test data of one data set, with its name (variants named explicitly)."""

    name: str
    x_train: Tensor  # [n_train, x_dim]
    x_test: Tensor  # [n_test, x_dim]
    binarize: bool  # binarize dynamically during training (grey values in [0, 1])
    likelihood: str  # "bernoulli" or "gaussian"
    y_test: Tensor | None = None

    @property
    def x_dim(self) -> int:
        return int(self.x_train.shape[1])


def load_dataset(name: str, root: str | None = None, download: bool = True,
                 seed: int = 0) -> Dataset:
    """Load one of :data:`DATASETS` (for the camel, ``seed`` fixes the sample)."""
    from . import data

    if name == "mnist":
        d = data.load_mnist(root=root, download=download)
        return Dataset(name, d.x_train, d.x_test, True, "bernoulli", d.y_test)
    if name == "binarized-mnist":
        d = data.load_binarized_mnist(root=root)
        return Dataset(name, d.x_train, d.x_test, False, "bernoulli")
    if name in ("omniglot-lake28", "omniglot-burda"):
        d = data.load_omniglot(root=root, variant=name.split("-")[1], download=download)
        return Dataset(name, d.x_train, d.x_test, True, "bernoulli")
    if name == "camel":
        x_train, x_test = data.camel_data(n_train=10_000, n_test=2_000, seed=seed)
        return Dataset(name, x_train, x_test, False, "gaussian")
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


@dataclass
class RunConfig:
    """Everything that defines one trained model."""

    dataset: str = "mnist"
    objective: str = "iwae"
    k: int = 5
    layers: list[list[int]] = field(default_factory=lambda: [list(s) for s in ONE_LAYER])
    epochs: int | None = None  # None: the paper's full schedule (3,280 epochs)
    n_train: int | None = None  # None: the whole training set; else its first n_train images
    seed: int = 0
    batch_size: int = 20
    lr: float | None = None  # None: the paper's rates; else one constant rate (needs epochs)

    def __post_init__(self) -> None:
        self.layers = [[int(s) for s in spec] for spec in self.layers]
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {DATASETS}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.lr is not None:
            if not 0 < self.lr < float("inf"):
                raise ValueError(f"lr must be a positive number, got {self.lr}")
            if self.epochs is None:
                raise ValueError("a constant learning rate needs a number of epochs (--epochs "
                                 "N); without one the paper's schedule and rates are used")

    @property
    def name(self) -> str:
        n_layers = len(self.layers)
        return f"{self.dataset}-{self.objective}-k{self.k}-{n_layers}L-s{self.seed}"

    def schedule(self) -> list[Stage]:
        """The paper's schedule cut to ``epochs``, or ``epochs`` epochs at the constant ``lr``."""
        if self.lr is not None:
            return [Stage(self.epochs, self.lr)]
        s = burda_schedule()
        return s if self.epochs is None else truncate_schedule(s, self.epochs)


def eval_images(ds: Dataset, n: int | None = None, seed: int = 0) -> Tensor:
    """The first ``n`` test images as they are scored: binarized once with a fixed seed (a CPU
    generator) when the data set is binarized during training, as in the authors' code.

    -> [n, x_dim] on the CPU
    """
    x = ds.x_test if n is None else ds.x_test[: int(n)]
    if ds.binarize:
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))
    return x


def build_model(cfg: RunConfig, ds: Dataset, device: torch.device | str = "cpu") -> IWAE:
    """The seeded, initialised model of ``cfg`` (output bias from the training data)."""
    x_train = ds.x_train if cfg.n_train is None else ds.x_train[: cfg.n_train]
    bias = bernoulli_output_bias(x_train) if ds.likelihood == "bernoulli" else None
    torch.manual_seed(cfg.seed)
    return IWAE(ds.x_dim, cfg.layers, likelihood=ds.likelihood, output_bias=bias).to(device)


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
    from .profiles import default_device

    device = torch.device(device) if device is not None else default_device()
    ds = ds if ds is not None else load_dataset(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg, ds, device)
    x_train = ds.x_train if cfg.n_train is None else ds.x_train[: cfg.n_train]
    if run_dir is None:
        history = fit(model, x_train, objective=cfg.objective, k=cfg.k,
                      schedule=cfg.schedule(), batch_size=cfg.batch_size, seed=cfg.seed,
                      binarize=ds.binarize, progress=progress)
        return model, history
    run_dir = Path(run_dir)
    with RunDirLock(run_dir, "--out"):  # held through fit (which takes it again)
        if restart:
            for name in (CHECKPOINT_NAME, LOG_NAME, "config.json", "result.json", "eval.json"):
                (run_dir / name).unlink(missing_ok=True)
        _check_run_dir(run_dir, cfg)
        write_json_atomic(run_dir / "config.json", asdict(cfg))
        history = fit(model, x_train, objective=cfg.objective, k=cfg.k,
                      schedule=cfg.schedule(), batch_size=cfg.batch_size, seed=cfg.seed,
                      binarize=ds.binarize, run_dir=run_dir, progress=progress)
    return model, history


def _check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Before anything is written: a run directory holding a run of another configuration, or
    one already past ``cfg.epochs``, is refused (one line naming what differs)."""
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / CHECKPOINT_NAME
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
    done = len(load_checkpoint(ckpt_path).get("history", []))
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
    """The trained model, its config and its log from a run directory written by train_run."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir / "config.json")
    ckpt_path = run_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path, map_location=device)
    check_state(state, ("model", "model_config", "history"), ckpt_path)
    mc = state["model_config"]
    try:
        model = IWAE(mc["x_dim"], mc["layers"], likelihood=mc["likelihood"]).to(device)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"the checkpoint {ckpt_path} does not hold a model this package "
                              f"can build ({type(e).__name__}: {e}); delete the run "
                              "directory or train it again") from None
    model.eval()
    return model, cfg, list(state["history"])


def layers_from_string(text: str) -> list[list[int]]:
    """Parse "200,200,50" or "200,200,100;100,100,50" (or "1"/"2" for the paper's)."""
    text = text.strip()
    if text in ("1", "1L"):
        return [list(s) for s in ONE_LAYER]
    if text in ("2", "2L"):
        return [list(s) for s in TWO_LAYERS]
    try:
        layers = [[int(v) for v in part.split(",")] for part in text.split(";")]
    except ValueError:
        raise ValueError(
            f"cannot read layers {text!r}: write each stochastic layer as hidden sizes then the "
            "latent size, layers separated by ';', e.g. '200,200,100;100,100,50' (or 1 / 2)"
        ) from None
    return layers
