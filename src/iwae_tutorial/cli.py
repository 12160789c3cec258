"""Command line: ``python -m iwae_tutorial train|evaluate|reproduce ...`` (or ``iwae-tutorial``).

- ``train``: train one configuration into a run directory (resumable: run the same command
  again to continue from its checkpoint), then estimate the test NLL by L_k and count the
  active units; writes ``OUT/result.json``.
- ``evaluate``: evaluate a run directory written by ``train`` (other k, other test subset).
- ``reproduce``: the paper's tables (see :mod:`iwae_tutorial.reproduce`).

The arguments of every subcommand are declared in :mod:`iwae_tutorial.cliargs`; the commands
here check what needs the file system, then the modules below do the work (``runs``,
``evaluate``, ``reproduce``).

Bad input (missing or corrupt data, unknown names, malformed sizes, an unreadable checkpoint,
a run directory in use, a folder that cannot be written, too little memory) gives a one-line
error and exit status 2; a diverged run gives exit status 1. Set ``IWAE_DEBUG=1`` to see
tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .cliargs import PROG, build_parser, parse_layers

__all__ = ["main", "build_parser", "parse_layers"]



class CLIError(Exception):
    """Bad input: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- helpers
def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _device(name: str | None):
    """The torch device of ``--device`` (else ``$IWAE_DEVICE``, else cuda when available, else
    cpu), checked to exist here; a CLIError names the option or variable it came from."""
    import torch

    env = os.environ.get("IWAE_DEVICE", "").strip()
    source, text = ("--device", name) if name else ("IWAE_DEVICE", env) if env else (None, None)
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shown = f"--device {text}" if source == "--device" else f"IWAE_DEVICE={text}"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"{shown} is not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"{shown}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"{shown}: there are only {torch.cuda.device_count()} CUDA GPU(s) "
                           "here; use cuda:0 or --device cpu")
    elif dev.type != "cpu":
        raise CLIError(f"{shown}: only cpu and cuda devices are supported; use --device cpu"
                       + (" or cuda" if torch.cuda.is_available() else ""))
    return dev


def _load_dataset(name: str, args: argparse.Namespace, seed: int):
    from .data import DataError, load_dataset

    try:
        return load_dataset(name, root=args.data_dir, download=not args.no_download, seed=seed)
    except DataError as e:
        raise CLIError(str(e)) from None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _not_empty(*options: tuple[str, str | None, str]) -> None:
    """A CLIError for a path option (flag, value, an example) given as "" (it would mean the
    working directory)."""
    for flag, value, example in options:
        if value is not None and not str(value).strip():
            raise CLIError(f"{flag} is empty; name a path, e.g. {flag} {example}")


def _finite_score(ev: dict[str, Any], what: Path) -> None:
    """A CLIError (nothing written) when the test NLL is NaN or infinite."""
    import math

    if ev.get("nll") is None or not math.isfinite(ev["nll"]):
        raise CLIError(f"the model in {what} scores a non-finite test log-likelihood (NLL "
                       f"{ev.get('nll')}): its weights are unusable; nothing was written. "
                       "Train it again (train --restart)")


def _check_gemm_env() -> None:
    """$IWAE_FLEET_GEMM, when set, must name a kernel: checked before any computing."""
    value = os.environ.get("IWAE_FLEET_GEMM")
    if value is not None and value not in ("auto", "onednn", "bmm"):
        raise CLIError(f"IWAE_FLEET_GEMM={value!r} is not a matrix-product kernel; set it to "
                       "auto, onednn or bmm, or unset it")


def _evaluate(model, ds, *, k: int, n: int | None, seed: int, batch_size: int,
              progress: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Test NLL by L_k on the first n test images (binarized once with ``seed``, as in
    ``reproduce``), and the active units on the first 500 training examples binarized once."""
    import torch

    from .evaluate import (
        ACTIVE_UNITS_THRESHOLD,
        eval_images,
        eval_subset_text,
        log_likelihood,
        paper_active_units,
    )
    from .results import evaluation_fields

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
    au, n_au = paper_active_units(model, ds.x_train, ds.binarize, seed)
    t_au = time.perf_counter() - t0
    ev = evaluation_fields(ll, k=k, n_total=n_total, seed=seed, binarized=ds.binarize,
                           active_units=au, active_units_n=n_au,
                           threshold=ACTIVE_UNITS_THRESHOLD,
                           subset=eval_subset_text(ds, n_used))
    return ev, {"eval_nll": t_nll, "active_units": t_au}


def _schedule_info(cfg) -> dict[str, Any]:
    """What the learning rates were: the paper's (cut to N epochs) or one constant rate."""
    return {
        "kind": "paper" if cfg.lr is None else "constant",
        "stages": [{"epochs": st.epochs, "lr": st.lr} for st in cfg.schedule()],
    }


def _summary(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [f"run {result['name']} ({result['dataset']}, {len(cfg['layers'])} stochastic "
             f"layer(s) {cfg['layers']}, objective {cfg['objective']}, k={cfg['k']})"]
    if result.get("train_bound") is not None:
        lines.append(f"  epochs done: {result['epochs']} of {result['epochs_planned']}; "
                     f"final train bound {result['train_bound']:.3f} nats")
    sched = result.get("schedule")
    if sched is not None:
        rates = sorted({st["lr"] for st in sched["stages"]}, reverse=True)
        what = "the paper's schedule" if sched["kind"] == "paper" else "a constant rate"
        lines.append(f"  learning rate: {what}, " + ", ".join(f"{r:.3g}" for r in rates[:4])
                     + (" ..." if len(rates) > 4 else ""))
    if result.get("nll") is not None:
        se = result.get("nll_stderr")
        se_txt = f" +- {se:.2f}" if se is not None else ""
        lines.append(f"  test NLL (-L_{result['eval_k']}, {result['eval_subset']}): "
                     f"{result['nll']:.2f}{se_txt} nats")
        lines.append(f"  active units per layer: {result['active_units']} "
                     f"(threshold {result['active_units_threshold']})")
    w = result["wall_time_s"]
    lines.append("  wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in w.items()
                                               if v is not None))
    lines.append(f"  written: {result['_path']}")
    return "\n".join(lines)


def _write_result(path: Path, result: dict[str, Any], argv: Sequence[str], t_start: float,
                  device) -> int:
    """Add the provenance to a result record, write it atomically, print its summary."""
    from .checkpoints import write_json_atomic
    from .provenance import provenance

    result["provenance"] = provenance(command=[PROG, *argv],
                                      wall_seconds=time.perf_counter() - t_start, device=device)
    write_json_atomic(path, result)
    print(_summary({**result, "_path": str(path)}))
    return 0


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:

    from .checkpoints import check_writable
    from .integrity import claim_run_dir
    from .results import model_record
    from .runs import CHECKPOINT_NAME, RESULT_NAME, RunConfig, train_run
    from .schedule import schedule_epochs

    t_start = time.perf_counter()
    try:
        cfg = RunConfig(dataset=args.dataset, objective=args.objective, k=args.k,
                        layers=args.layers, epochs=args.epochs, n_train=args.n_train,
                        seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        raise CLIError(str(e)) from None
    _set_threads(args.threads)
    device = _device(args.device)
    _not_empty(("--out", args.out, "runs/my-run"))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory; --out names the run "
                       "directory (it is created)")
    claim_run_dir(out, "--out", (CHECKPOINT_NAME,), write=False)  # ours, or refused
    check_writable(out / RESULT_NAME, "--out")  # before any training

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
        model, history = train_run(cfg, run_dir=out, device=device, ds=ds, progress=progress,
                                   restart=args.restart)
    except KeyboardInterrupt:
        _log(f"interrupted; the last finished epoch is saved in {out}. Run the same command "
             "again to resume.")
        return 130
    t_train = time.perf_counter() - t0

    seconds: dict[str, float | None] = {
        "load_data": t_data,
        "train": t_train,
        "train_all_sessions": float(sum(h["seconds"] for h in history)),
        "eval_nll": None,
        "active_units": None,
    }
    ev = None
    if not args.skip_eval:
        _log(f"evaluating: L_{args.eval_k} on "
             f"{'all' if args.eval_n is None else 'the first ' + str(args.eval_n)} test images")
        ev, ev_seconds = _evaluate(model, ds, k=args.eval_k, n=args.eval_n,
                                   seed=args.eval_seed, batch_size=args.eval_batch_size,
                                   progress=progress)
        _finite_score(ev, out / CHECKPOINT_NAME)
        seconds.update(ev_seconds)
    result = model_record(cfg, ds.name, history, ev, n_train=n_used,
                          device=str(device), epochs_planned=schedule_epochs(cfg.schedule()),
                          schedule=_schedule_info(cfg), wall_time_s=seconds)
    return _write_result(out / RESULT_NAME, result, argv, t_start, device)


def cmd_evaluate(args: argparse.Namespace, argv: Sequence[str]) -> int:

    from .checkpoints import check_writable
    from .results import model_record
    from .runs import CHECKPOINT_NAME, EVAL_NAME, check_run_data, read_run
    from .schedule import schedule_epochs

    t_start = time.perf_counter()
    _not_empty(("--run", args.run, "runs/my-run"), ("--out", args.out, "eval-k5000.json"))
    run = Path(args.run)
    if not run.is_dir():
        raise CLIError(f"--run {run} is not a directory")
    path = Path(args.out) if args.out else run / EVAL_NAME
    check_writable(path, "--out")  # before any computing
    _set_threads(args.threads)
    device = _device(args.device)
    with _run_lock(run, writing_into=args.out is None):  # train may be writing there
        try:
            model, cfg, history, meta = read_run(run, device=device)
        except FileNotFoundError as e:
            raise CLIError(str(e)) from None
        ds = _load_dataset(cfg.dataset, args, cfg.seed)
        check_run_data(run, meta, ds)  # the data set config.json names is the model's
        ev, seconds = _evaluate(model, ds, k=args.eval_k, n=args.eval_n, seed=args.eval_seed,
                                batch_size=args.eval_batch_size, progress=not args.no_progress)
        _finite_score(ev, run / CHECKPOINT_NAME)
        result = model_record(cfg, ds.name, history, ev, run=str(run),
                              device=str(device), epochs_planned=schedule_epochs(cfg.schedule()),
                              schedule=_schedule_info(cfg), wall_time_s=seconds)
        return _write_result(path, result, argv, t_start, device)


@contextlib.contextmanager
def _run_lock(run: Path, writing_into: bool) -> Iterator[None]:
    """The run directory's lock, held while ``evaluate`` reads it (and writes eval.json
    there): a ``train`` working in it refuses this, and is refused while this runs. A
    folder evaluate may not write into (read-only; the result goes elsewhere) is read
    unlocked."""
    from .checkpoints import RunDirLock

    lock = RunDirLock(run, "--run")
    try:
        lock.__enter__()
    except OSError as e:
        if writing_into or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield
        return
    try:
        yield
    finally:
        lock.__exit__()


def cmd_reproduce(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .checkpoints import check_writable
    from .fleet.stacked import tune_malloc
    from .reproduce import EXIT_NOT_FINISHED, protocol_tag, reproduce, resolve_budget

    _not_empty(("--run-root", args.run_root, "runs/reproduce"),
               ("--results-dir", args.results_dir, "results"))
    if args.gemm == "auto":
        _check_gemm_env()
    device = _device(args.device)
    _set_threads(args.threads)
    two = args.two_layer_epochs
    if two is not None and two >= resolve_budget(args.budget).epochs:
        two = None  # the whole budget
    tag = protocol_tag(args.dataset, args.budget, args.batch_size, args.trainer, args.tf32, two)
    check_writable(Path(args.results_dir) / f"{tag}.json", "--results-dir")
    check_writable(Path(args.run_root) / "probe", "--run-root")  # before any computing
    if not args.no_malloc_tuning:
        tune_malloc()
    status, path = reproduce(
        args.dataset, args.budget, run_root=args.run_root, results_dir=args.results_dir,
        device=device, max_minutes=args.max_minutes, seed=args.seed, eval_k=args.eval_k,
        eval_n=args.eval_n, eval_seed=args.eval_seed, eval_batch_size=args.eval_batch_size,
        two_layer_epochs=args.two_layer_epochs, restart=args.restart, gemm=args.gemm,
        data_dir=args.data_dir,
        download=not args.no_download, progress=not args.no_progress,
        batch_size=args.batch_size, trainer=args.trainer, tf32=args.tf32, force=args.force,
        until_epochs=args.until_epochs, whole_stages=args.whole_stages,
        epoch_seconds_hint=args.epoch_seconds_hint,
        command=["python", "-m", "iwae_tutorial", *argv])
    if status == "done":
        if path is not None:  # several ranks: rank 0 wrote it
            print(f"wrote {path}")
        return 0
    print(f"stopped before the end ({status}); the state is saved. Run the same command again "
          "to continue.", file=sys.stderr)
    return EXIT_NOT_FINISHED


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "reproduce": cmd_reproduce}


def user_error(e: BaseException, command: str) -> str | None:
    """The one-line message for an error caused by the input or the machine (bad data, an
    unreadable checkpoint, a folder in use or not writable, a full disk, too little memory),
    or None for anything else (a bug: shown with its traceback)."""
    if isinstance(e, MemoryError):  # before any import: there may be no memory for one
        oom: tuple[type[BaseException], ...] = (MemoryError,)
    else:
        import torch

        oom = (torch.OutOfMemoryError, MemoryError)
    from .checkpoints import WRITE_FIX, CheckpointError, RunDirLockedError
    from .data import DataError

    if isinstance(e, (CLIError, DataError, CheckpointError, RunDirLockedError, ValueError)):
        text = str(e)
    elif isinstance(e, oom) or (
            isinstance(e, RuntimeError) and ("out of memory" in str(e).lower()
                                             or "can't allocate memory" in str(e).lower())):
        sizes = {"train": "--k or --batch-size (training) or --eval-batch-size (evaluation)",
                 "evaluate": "--eval-batch-size (or --k)",
                 "reproduce": "--eval-batch-size (or a smaller --budget)"}[command]
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        text = f"out of memory ({first[:160]}); try a smaller {sizes}"
    elif isinstance(e, OSError):
        what = e.filename or ""
        reason = e.strerror or str(e)
        fix = {errno.ENOSPC: "free some disk space or write elsewhere",
               errno.EDQUOT: "free some disk space or write elsewhere",
               errno.EACCES: "choose a folder you can write to (or fix its permissions)",
               errno.EPERM: "choose a folder you can write to (or fix its permissions)",
               errno.EROFS: "choose a folder on a writable disk",
               errno.EFBIG: WRITE_FIX, errno.EIO: WRITE_FIX}.get(e.errno, "")
        text = str(e) if not e.strerror else f"{what}: {reason}" if what else reason
        if fix:
            text = f"{text}; {fix}"
    else:
        return None
    return " ".join(text.split())  # one line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("IWAE_DEBUG", "") not in ("", "0")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad arguments (2, message printed)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)

    try:
        from .train import TrainingDivergedError  # in the try: it may fail for lack of memory

        try:
            return COMMANDS[args.command](args, argv)
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
    except Exception as e:
        return _failed(e, args.command, debug)


def _failed(e: Exception, command: str, debug: bool) -> int:
    """Status 2 and the one-line message of a user error; anything else (a bug) re-raised."""
    message = user_error(e, command)
    if debug or message is None:
        raise e
    if getattr(e, "quiet", False):  # distributed.WorldSizeError: every rank has it, rank 0 says it
        return 2
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
