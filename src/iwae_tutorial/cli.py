"""Command line: ``python -m iwae_tutorial train|evaluate|reproduce ...`` (or ``iwae-tutorial``).

- ``train``: train one configuration into a run directory (resumable: run the same command
  again to continue from its checkpoint), then estimate the test NLL by L_k and count the
  active units; writes ``OUT/result.json``.
- ``evaluate``: evaluate a run directory written by ``train`` (other k, other test subset).
- ``reproduce``: the paper's tables (see :mod:`iwae_tutorial.reproduce`).

Bad input (missing data, unknown names, malformed sizes) gives a one-line error and exit
status 2; a diverged run gives exit status 1. Set ``IWAE_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "parse_layers"]

PROG = "iwae-tutorial"
DATASETS = ("mnist", "omniglot-lake28", "omniglot-burda", "binarized-mnist", "camel")
ACTIVE_UNITS_N = 500  # the first 500 training examples, binarized once (authors' code)
ACTIVE_UNITS_THRESHOLD = 0.01


class CLIError(Exception):
    """Bad input: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- argument types
def parse_layers(text: str) -> list[list[int]]:
    """argparse type for --layers: "1", "2", "200,200,50" or "200,200,100;100,100,50"."""
    from .experiments import layers_from_string

    try:
        layers = layers_from_string(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not layers or any(len(spec) == 0 or any(s <= 0 for s in spec) for spec in layers):
        raise argparse.ArgumentTypeError(
            f"cannot read layers {text!r}: each stochastic layer is positive hidden sizes then "
            "the latent size, layers separated by ';', e.g. '200,200,100;100,100,50' (or 1 / 2)"
        )
    return layers


def _positive(cast: type, noun: str):
    """An argparse type: ``cast(text)``, which must be positive and finite."""

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not (0 < v < float("inf")):
            raise argparse.ArgumentTypeError(f"expected {noun}, got {v}")
        return v

    return parse


_positive_int = _positive(int, "a positive integer")
_positive_float = _positive(float, "a positive finite number")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# --------------------------------------------------------------------------- parser
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="data directory searched first (then $IWAE_DATA_DIR, then the user "
                        "cache directory)")
    p.add_argument("--no-download", action="store_true",
                   help="never download missing data; fail with a clear message instead")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu; or $IWAE_DEVICE)")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice; 1 can be much faster "
                        "on a machine busy with other jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval_args(p: argparse.ArgumentParser, k_flag: str, n_flag: str) -> None:
    p.add_argument(k_flag, dest="eval_k", type=_positive_int, default=5000, metavar="K",
                   help="samples of the L_k estimate of the test log-likelihood (default 5000, "
                        "as in the paper)")
    p.add_argument(n_flag, dest="eval_n", type=_positive_int, default=None, metavar="N",
                   help="evaluate on the first N test images only (default: all of them)")
    p.add_argument("--eval-seed", type=_int, default=0,
                   help="seed of the evaluation's sampling noise (default 0)")
    p.add_argument("--eval-batch-size", type=_positive_int, default=100, metavar="B",
                   help="test images per L_k batch (default 100)")


def build_parser(reproduce_module: Any = None) -> argparse.ArgumentParser:
    """The argument parser. ``reproduce_module`` (when given) configures ``reproduce``."""
    from .objectives import OBJECTIVES

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Variational and importance weighted autoencoders (Burda et al., 2015).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,reproduce}")
    sub.required = True

    t = sub.add_parser(
        "train", help="train one model into a run directory, then evaluate it",
        description="Train one configuration into OUT (resumable: rerun the same command to "
                    "continue from OUT/checkpoint.pt), then estimate the test NLL by L_k and "
                    "count the active units. Writes OUT/result.json.",
    )
    t.add_argument("--dataset", choices=DATASETS, default="mnist",
                   help="data set (default mnist = dynamically binarized MNIST)")
    t.add_argument("--objective", choices=sorted(OBJECTIVES), default="iwae",
                   help="training objective (default iwae)")
    t.add_argument("--k", type=_positive_int, default=5, help="samples per data point (default 5)")
    t.add_argument("--layers", type=parse_layers, default=parse_layers("1"), metavar="SPEC",
                   help="'1' or '2' (the paper's architectures, default 1), or sizes such as "
                        "'200,200,50' or '200,200,100;100,100,50'")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help="train for the first EPOCHS epochs of the paper's schedule (default: "
                        "the whole schedule, 3,280 epochs)")
    t.add_argument("--lr", type=_positive_float, default=None, metavar="LR",
                   help="one constant learning rate for all EPOCHS instead of the paper's "
                        "rates (needs --epochs). The paper's first rate, 1e-3, is tuned for "
                        "its 3,280 epochs; for a one-epoch run 2e-3 did best on the 400 "
                        "validation images (see README)")
    t.add_argument("--n-train", type=_positive_int, default=None, metavar="N",
                   help="use the first N training examples only (default: all)")
    t.add_argument("--seed", type=_int, default=0, help="random seed (default 0)")
    t.add_argument("--batch-size", type=_positive_int, default=20, help="minibatch (default 20)")
    t.add_argument("--out", required=True, metavar="DIR", help="run directory (required)")
    _add_eval_args(t, "--eval-k", "--eval-n")
    t.add_argument("--skip-eval", action="store_true", help="train only; no test NLL")
    _add_data_args(t)

    e = sub.add_parser(
        "evaluate", help="evaluate a run directory written by train",
        description="Estimate the test NLL by L_k and count the active units of a trained run.",
    )
    e.add_argument("--run", required=True, metavar="DIR", help="run directory written by train")
    _add_eval_args(e, "--k", "--n")
    e.add_argument("--out", default=None, metavar="FILE",
                   help="result file (default: DIR/eval.json)")
    _add_data_args(e)

    r = sub.add_parser("reproduce", help="reproduce the paper's tables (see --help)",
                       description="Reproduce the paper's experiments.")
    if reproduce_module is not None:
        reproduce_module.configure_parser(r)
    else:
        r.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------- helpers
def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _device(name: str | None):
    import torch

    from .profiles import default_device

    try:
        dev = torch.device(name) if name else default_device()
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"bad --device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} requested but CUDA is not available; use --device cpu")
    return dev


def _load_dataset(name: str, args: argparse.Namespace, seed: int):
    from .data import DataError
    from .experiments import load_dataset

    try:
        return load_dataset(name, root=args.data_dir, download=not args.no_download, seed=seed)
    except DataError as e:
        raise CLIError(str(e)) from None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _evaluate(model, ds, *, k: int, n: int | None, seed: int, batch_size: int,
              progress: bool) -> dict[str, Any]:
    """Test NLL by L_k on the first n test images (binarized once with ``seed``, as in
    ``reproduce``), and the active units on the first 500 training examples binarized once."""
    import torch

    from .evaluate import active_units, log_likelihood
    from .experiments import eval_images

    device = model.device
    n_total = int(ds.x_test.shape[0])
    n_used = n_total if n is None else min(int(n), n_total)
    x_test = eval_images(ds, n_used, seed)  # binarized once, as in `reproduce`
    gen = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    ll = log_likelihood(model, x_test, k, batch_size=batch_size, generator=gen,
                        progress=progress)
    t_nll = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen_au = torch.Generator(device=device).manual_seed(seed + 1)
    x_au = ds.x_train[:ACTIVE_UNITS_N].to(device)
    if ds.binarize:
        x_au = torch.bernoulli(x_au, generator=gen_au)
    au = active_units(model, x_au, ACTIVE_UNITS_THRESHOLD, generator=gen_au)
    t_au = time.perf_counter() - t0

    nll = -ll
    return {
        "test_nll": float(nll.mean()),
        "test_nll_stderr": float(nll.std(unbiased=True) / n_used**0.5) if n_used > 1 else None,
        "eval_k": int(k),
        "eval_n": n_used,
        "eval_n_total": n_total,
        "eval_subset": ("all test images" if n_used == n_total
                        else f"the first {n_used} of the {n_total} test images"),
        "eval_seed": int(seed),
        "test_binarization": (f"one fixed Bernoulli draw (CPU generator seed {seed})"
                              if ds.binarize else "none"),
        "active_units": list(au.counts),
        "active_units_total": int(sum(au.counts)),
        "active_units_variances": [v.tolist() for v in au.variances],
        "active_units_n": int(x_au.shape[0]),
        "active_units_threshold": ACTIVE_UNITS_THRESHOLD,
        "_seconds": {"eval_nll": t_nll, "active_units": t_au},
    }


def _schedule_info(cfg) -> dict[str, Any]:
    """What the learning rates were: the paper's (cut to N epochs) or one constant rate."""
    return {
        "kind": "paper" if cfg.lr is None else "constant",
        "stages": [{"epochs": st.epochs, "lr": st.lr} for st in cfg.schedule()],
    }


def _summary(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"run {result['run_name']} ({result['dataset']}, {len(cfg['layers'])} stochastic "
             f"layer(s) {cfg['layers']}, objective {cfg['objective']}, k={cfg['k']})"]
    if result.get("final_train_bound") is not None:
        lines.append(f"  epochs done: {result['epochs_done']} of {result['epochs_planned']}; "
                     f"final train bound {result['final_train_bound']:.3f} nats")
    sched = result.get("schedule")
    if sched is not None:
        rates = sorted({st["lr"] for st in sched["stages"]}, reverse=True)
        what = "the paper's schedule" if sched["kind"] == "paper" else "a constant rate"
        lines.append(f"  learning rate: {what}, " + ", ".join(f"{r:.3g}" for r in rates[:4])
                     + (" ..." if len(rates) > 4 else ""))
    if result.get("test_nll") is not None:
        se = result.get("test_nll_stderr")
        se_txt = f" +- {se:.2f}" if se is not None else ""
        lines.append(f"  test NLL (-L_{result['eval_k']}, {result['eval_subset']}): "
                     f"{result['test_nll']:.2f}{se_txt} nats")
        lines.append(f"  active units per layer: {result['active_units']} "
                     f"(threshold {result['active_units_threshold']})")
    w = result["wall_seconds"]
    lines.append("  wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in w.items()
                                               if v is not None))
    lines.append(f"  written: {result['_path']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from dataclasses import asdict

    from .experiments import RunConfig, train_run
    from .provenance import provenance, write_json_atomic
    from .train import schedule_epochs

    t_start = time.perf_counter()
    try:
        cfg = RunConfig(dataset=args.dataset, objective=args.objective, k=args.k,
                        layers=args.layers, epochs=args.epochs, n_train=args.n_train,
                        seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        raise CLIError(str(e)) from None
    _set_threads(args.threads)
    device = _device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")

    t0 = time.perf_counter()
    ds = _load_dataset(cfg.dataset, args, cfg.seed)
    t_data = time.perf_counter() - t0
    n_avail = int(ds.x_train.shape[0])
    if cfg.n_train is not None and cfg.n_train > n_avail:
        raise CLIError(f"--n-train {cfg.n_train} exceeds the {n_avail} training examples of "
                       f"{ds.name}")
    n_used = n_avail if cfg.n_train is None else cfg.n_train
    if n_used < cfg.batch_size:
        raise CLIError(f"--batch-size {cfg.batch_size} is larger than the {n_used} training "
                       "examples")

    progress = not args.no_progress
    _log(f"training {cfg.name} on {ds.name} ({n_used} examples, device {device}) into {out}")
    t0 = time.perf_counter()
    try:
        model, history = train_run(cfg, run_dir=out, device=device, ds=ds, progress=progress)
    except KeyboardInterrupt:
        _log(f"interrupted; the last finished epoch is saved in {out}. Run the same command "
             "again to resume.")
        return 130
    t_train = time.perf_counter() - t0

    result: dict[str, Any] = {
        "config": asdict(cfg),
        "run_name": cfg.name,
        "dataset": ds.name,
        "n_train": n_used,
        "device": str(device),
        "epochs_done": int(history[-1]["epoch"]) if history else 0,
        "epochs_planned": schedule_epochs(cfg.schedule()),
        "schedule": _schedule_info(cfg),
        "final_train_bound": float(history[-1]["train_bound"]) if history else None,
        "train_bound_per_epoch": [float(h["train_bound"]) for h in history],
        "test_nll": None,
        "eval_k": None,
        "eval_n": None,
    }
    seconds: dict[str, float | None] = {
        "load_data": t_data,
        "train": t_train,
        "train_all_sessions": float(sum(h["seconds"] for h in history)),
        "eval_nll": None,
        "active_units": None,
    }
    if not args.skip_eval:
        _log(f"evaluating: L_{args.eval_k} on "
             f"{'all' if args.eval_n is None else 'the first ' + str(args.eval_n)} test images")
        ev = _evaluate(model, ds, k=args.eval_k, n=args.eval_n, seed=args.eval_seed,
                       batch_size=args.eval_batch_size, progress=progress)
        seconds.update(ev.pop("_seconds"))
        result.update(ev)
    result["wall_seconds"] = seconds
    path = out / "result.json"
    result["provenance"] = provenance(command=[PROG, *argv],
                                      wall_seconds=time.perf_counter() - t_start, device=device)
    write_json_atomic(path, result)
    print(_summary({**result, "_path": str(path)}))
    return 0


def cmd_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from dataclasses import asdict

    from .experiments import load_run
    from .provenance import provenance, write_json_atomic
    from .train import schedule_epochs

    t_start = time.perf_counter()
    run = Path(args.run)
    if not run.is_dir():
        raise CLIError(f"--run {run} is not a directory")
    _set_threads(args.threads)
    device = _device(args.device)
    try:
        model, cfg, history = load_run(run, device=device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        raise CLIError(str(e)) from None
    ds = _load_dataset(cfg.dataset, args, cfg.seed)
    ev = _evaluate(model, ds, k=args.eval_k, n=args.eval_n, seed=args.eval_seed,
                   batch_size=args.eval_batch_size, progress=not args.no_progress)
    seconds = ev.pop("_seconds")
    result: dict[str, Any] = {
        "run": str(run),
        "config": asdict(cfg),
        "run_name": cfg.name,
        "dataset": ds.name,
        "device": str(device),
        "epochs_done": int(history[-1]["epoch"]) if history else 0,
        "epochs_planned": schedule_epochs(cfg.schedule()),
        "schedule": _schedule_info(cfg),
        "final_train_bound": float(history[-1]["train_bound"]) if history else None,
        **ev,
        "wall_seconds": seconds,
    }
    path = Path(args.out) if args.out else run / "eval.json"
    result["provenance"] = provenance(command=[PROG, *argv],
                                      wall_seconds=time.perf_counter() - t_start, device=device)
    write_json_atomic(path, result)
    print(_summary({**result, "_path": str(path)}))
    return 0


# --------------------------------------------------------------------------- entry point
def _subcommand(argv: Sequence[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def _import_reproduce() -> Any:
    """The reproduce module, or None when it does not exist (yet)."""
    import importlib

    try:
        return importlib.import_module(f"{__package__}.reproduce")
    except ModuleNotFoundError as e:
        if e.name in (f"{__package__}.reproduce",):
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("IWAE_DEBUG", "") not in ("", "0")
    reproduce = None
    if _subcommand(argv) == "reproduce":
        reproduce = _import_reproduce()
        if reproduce is None:
            print(f"{PROG} reproduce: error: this installation has no reproduce module "
                  f"({__package__}.reproduce); the subcommand is not available yet",
                  file=sys.stderr)
            return 2
    parser = build_parser(reproduce)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad arguments (2, message printed)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)

    from .data import DataError
    from .train import TrainingDivergedError

    try:
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "evaluate":
            return cmd_evaluate(args, argv)
        return int(reproduce.run(args) or 0)
    except (CLIError, DataError, ValueError) as e:
        # bad input: missing data, unknown names, a checkpoint of another configuration, ...
        if debug or (isinstance(e, ValueError) and args.command == "reproduce"):
            raise
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDivergedError as e:
        if debug:
            raise
        print(f"{PROG} {args.command}: training diverged: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
