"""One configuration, end to end: which data, which model, which objective, how long.

The CLI (``python -m iwae_tutorial train``), the chapters and the reproduction scripts all go
through :func:`train_run` and :func:`load_run`, so a model is built, seeded and trained the
same way wherever it comes from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .models import IWAE, bernoulli_output_bias
from .train import CHECKPOINT_NAME, Stage, burda_schedule, fit, load_checkpoint, truncate_schedule

__all__ = ["RunConfig", "Dataset", "load_dataset", "build_model", "train_run", "load_run",
           "DATASETS", "ONE_LAYER", "TWO_LAYERS", "layers_from_string", "eval_images"]

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
) -> tuple[IWAE, list[dict]]:
    """Train ``cfg`` (resuming from ``run_dir`` if it holds a checkpoint of it).

    ``run_dir`` also receives ``config.json``. Returns (model in eval mode, per-epoch log).
    """
    from .profiles import default_device

    device = torch.device(device) if device is not None else default_device()
    ds = ds if ds is not None else load_dataset(cfg.dataset, seed=cfg.seed)
    model = build_model(cfg, ds, device)
    x_train = ds.x_train if cfg.n_train is None else ds.x_train[: cfg.n_train]
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "config.json"
        if cfg_path.exists() and (run_dir / CHECKPOINT_NAME).exists():
            old = json.loads(cfg_path.read_text())
            changed = sorted(key for key, value in asdict(cfg).items()
                             if key != "epochs" and old.get(key) != value)
            if changed:  # only the number of epochs may change when a run is continued
                new = asdict(cfg)
                diff = ", ".join(f"{c} {old.get(c)!r} there, {new[c]!r} now" for c in changed)
                raise ValueError(f"{run_dir} holds a run of another configuration ({diff}); "
                                 "use another run directory")
        cfg_path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    history = fit(model, x_train, objective=cfg.objective, k=cfg.k, schedule=cfg.schedule(),
                  batch_size=cfg.batch_size, seed=cfg.seed, binarize=ds.binarize,
                  run_dir=run_dir, progress=progress)
    return model, history


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[IWAE, RunConfig,
                                                                                list[dict]]:
    """The trained model, its config and its log from a run directory written by train_run."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir} holds no config.json: is it a run directory?")
    cfg = RunConfig(**json.loads(cfg_path.read_text()))
    state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
    mc = state["model_config"]
    model = IWAE(mc["x_dim"], mc["layers"], likelihood=mc["likelihood"]).to(device)
    model.load_state_dict(state["model"])
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
        return [[int(v) for v in part.split(",") if v.strip()] for part in text.split(";")]
    except ValueError:
        raise ValueError(
            f"cannot read layers {text!r}: write each stochastic layer as hidden sizes then the "
            "latent size, layers separated by ';', e.g. '200,200,100;100,100,50' (or 1 / 2)"
        ) from None
