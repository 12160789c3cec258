"""The command line's arguments: one parser (:func:`build_parser`) for ``train``, ``evaluate``
and ``reproduce``, with argument types that turn bad input into one line (argparse's usage
error, exit status 2) before anything runs."""

from __future__ import annotations

import argparse

from .data import DATASETS

__all__ = ["build_parser", "parse_layers", "PROG", "REPRODUCE_DATASETS", "SEED_MAX"]

PROG = "iwae-tutorial"
REPRODUCE_DATASETS = ("mnist", "omniglot-lake28", "omniglot-burda")
SEED_MAX = 2**63 - 3  # a run derives seeds seed, seed + 1 and seed + 2


# --------------------------------------------------------------------------- argument types
def _objective(text: str) -> str:
    """argparse type for --objective: a spec such as "iwae" or "power:p=2"."""
    from .objectives import parse_objective

    try:
        parse_objective(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_layers(text: str) -> list[list[int]]:
    """argparse type for --layers: "1", "2", "200,200,50" or "200,200,100;100,100,50"."""
    from .runs import layers_from_string

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


def _seed(text: str) -> int:
    """argparse type for seeds: an integer in [0, SEED_MAX]."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {SEED_MAX}, got {v}")
    return v


def _budget(text: str) -> str:
    from .reproduce import resolve_budget

    try:
        return resolve_budget(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    p.add_argument("--eval-seed", type=_seed, default=0,
                   help="seed of the test binarization and of the L_k noise (default 0)")
    p.add_argument("--eval-batch-size", type=_positive_int, default=100, metavar="B",
                   help="test images per L_k batch (default 100)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
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
    t.add_argument("--objective", type=_objective, default="iwae", metavar="SPEC",
                   help=f"training objective, one of {', '.join(sorted(OBJECTIVES))}, options "
                        "after a colon: power:p=2, miwae:m=5, ciwae:beta=0.05, piwae:m=5 "
                        "(default iwae)")
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
    t.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    t.add_argument("--batch-size", type=_positive_int, default=20, help="minibatch (default 20)")
    t.add_argument("--out", required=True, metavar="DIR", help="run directory (required)")
    _add_eval_args(t, "--eval-k", "--eval-n")
    t.add_argument("--skip-eval", action="store_true", help="train only; no test NLL")
    t.add_argument("--restart", action="store_true",
                   help="discard the run in OUT (checkpoint, log, results) and start anew")
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

    r = sub.add_parser("reproduce", help="reproduce the paper's Table 1 (see --help)")
    _add_reproduce_args(r)
    return parser


def _add_reproduce_args(p: argparse.ArgumentParser) -> None:
    from .reproduce import EXIT_NOT_FINISHED

    p.description = (
        "Train the 12 configurations of Table 1 (VAE/IWAE x k=1,5,50 x 1 or 2 stochastic "
        "layers) together with the fleet trainer, evaluate them, and write "
        "RESULTS_DIR/<dataset>-<budget>.json. Resumable: run the same command again to "
        f"continue. Exit status {EXIT_NOT_FINISHED}: stopped early (time limit or signal), "
        "state saved. Several processes: torchrun --nproc-per-node W -m iwae_tutorial "
        "reproduce ... (W <= 3; gloo on the CPU, NCCL on CUDA with rank R on cuda:R): each "
        "rank trains and scores whole groups of configurations (one k of a fleet) in "
        "RUN_ROOT/<name>/rank-R-of-W/ (resumable per rank), and rank 0 writes the one result "
        "file, with the numbers of one process.")
    p.add_argument("--dataset", choices=REPRODUCE_DATASETS, default="mnist",
                   help="mnist (dynamically binarized, default), omniglot-lake28 (not the "
                        "paper's split) or omniglot-burda (the paper's chardata.mat)")
    p.add_argument("--budget", type=_budget, default="book",
                   help="smoke (seconds), book (default; ~20-35 min on 2 CPU cores for MNIST), "
                        "full (the paper's 3,280 epochs) or a number of epochs of the paper's "
                        "schedule on all training images")
    p.add_argument("--two-layer-epochs", type=_positive_int, default=None, metavar="E",
                   help="stop the two-layer cells after E epochs (the one-layer cells train "
                        "the whole budget); named -2L<E> in the result file")
    p.add_argument("--max-minutes", type=_positive_float, default=None, metavar="M",
                   help="stop cleanly (checkpointed) before M minutes of wall time; run the "
                        "same command again to continue")
    p.add_argument("--until-epochs", type=_positive_int, default=None, metavar="E",
                   help="score the stages that end by epoch E, then stop (exit status "
                        f"{EXIT_NOT_FINISHED}; the same command without it goes on)")
    p.add_argument("--whole-stages", action="store_true",
                   help="with --max-minutes: do not start a stage that the time left cannot "
                        "train and score (judged from the measured seconds per epoch)")
    p.add_argument("--epoch-seconds-hint", type=_positive_float, default=None, metavar="S",
                   help="seconds per epoch of one fleet, for --whole-stages before any epoch "
                        "is measured (e.g. from benchmarks/train_throughput.py)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of every configuration (default 0)")
    p.add_argument("--eval-k", type=_positive_int, default=None, metavar="K",
                   help="override the budget's number of samples of L_k")
    p.add_argument("--eval-n", type=_positive_int, default=None, metavar="N",
                   help="override the budget's number of test images (the first N)")
    p.add_argument("--eval-seed", type=_seed, default=0,
                   help="seed of the test binarization and of the L_k noise (default 0)")
    p.add_argument("--eval-batch-size", type=_positive_int, default=100, metavar="B",
                   help="test images per L_k batch (default 100)")
    p.add_argument("--run-root", default="runs/reproduce", metavar="DIR",
                   help="where the resumable state goes (default runs/reproduce)")
    p.add_argument("--results-dir", default="results", metavar="DIR",
                   help="where the result JSON goes (default results)")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved state of this dataset and budget and start anew")
    p.add_argument("--force", action="store_true",
                   help="replace a result file of the same name written with other settings "
                        "(--seed, --eval-k, --eval-n, --eval-seed); without it that is refused")
    p.add_argument("--batch-size", type=_positive_int, default=20, metavar="B",
                   help="minibatch of every configuration (default 20, the paper's); a larger "
                        "one scales the paper's learning rates by sqrt(B / 20) and is named in "
                        "the result file's protocol and name (-bB)")
    p.add_argument("--trainer", choices=("exact", "fast", "fast-device"), default="exact",
                   help="exact (default): each member's noise from its own generator, equal to "
                        "training it alone; fast: counter-based noise and CUDA-graph blocks "
                        "of steps (iwae_tutorial.fleet.fast), for GPUs (named -fast); "
                        "fast-device: the same with the device's generator, fewer kernels "
                        "(named -fast-device)")
    p.add_argument("--tf32", action="store_true",
                   help="TF32 matrix products on CUDA (named -tf32)")
    p.add_argument("--gemm", choices=("auto", "onednn", "bmm"), default="auto",
                   help="matrix-product kernels of the fleet on the CPU (default auto)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's malloc defaults (see "
                        "iwae_tutorial.fleet.stacked.tune_malloc)")
    _add_data_args(p)
