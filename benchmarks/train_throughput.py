"""Training throughput: the plain loop (one model at a time) vs the fleet (all 12 together).

Measures, in one run on one machine:

- the plain loop: ``train.fit`` (eager, batch 20), one model at a time, for each of the 12
  configurations of Table 1 (VAE/IWAE x k = 1, 5, 50 x 1 or 2 stochastic layers);
- the fleet trainer (:class:`iwae_tutorial.fleet.Fleet`) with all 12 together (and, on the CPU,
  the fleet restricted to torch.bmm, to separate the gain of batching/fusing from that of
  oneDNN's matmul);
- a large matmul, for the machine's practical peak FLOP/s.

Plain loops and fleet are timed in interleaved rounds (``--rounds``), and the median round is
reported, so a change of load on a shared machine hits both alike. Prints a JSON object as the
last line of output with, among others, ``device``, ``speedup`` (fleet throughput over the
plain loops' combined throughput, both counted as configuration-steps per second, by wall
time), ``projected_full_table_hours`` (the 3,280-epoch MNIST table, 2,980 steps per epoch) and
the fraction of peak FLOP/s reached.

    python benchmarks/train_throughput.py                 # ~2-4 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --steps 10 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from iwae_tutorial.checkpoints import write_json_atomic
from iwae_tutorial.fleet import Fleet, FleetMember, table1_configs
from iwae_tutorial.fleet.stacked import tune_malloc
from iwae_tutorial.models import IWAE
from iwae_tutorial.train import fit

BATCH = 20
X_DIM = 784
FULL_EPOCHS = 3280
STEPS_PER_EPOCH = 59_600 // BATCH  # 2,980


# ------------------------------------------------------------ helpers (eval_throughput too)
def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux/macOS
        return None


def device_name(device: torch.device) -> str:
    try:
        from iwae_tutorial.provenance import device_name as name

        return name(device)
    except Exception:  # noqa: BLE001 - best effort
        return str(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock and process CPU time of a block."""

    def __init__(self, device: torch.device):
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timer:
        sync(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def run_header(benchmark: str, device: torch.device, malloc_tuned: bool,
               load_before: list[float] | None) -> dict:
    """The fields every benchmark result starts with: what ran, where, under which load."""
    return {
        "benchmark": benchmark,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def report(result: dict, out: str | None) -> dict:
    """Print the result as the last line of output (one JSON object) and, with ``out``, write
    it there atomically."""
    if out:
        write_json_atomic(out, result)
    print(json.dumps(result))
    return result


def median(xs):
    return statistics.median(xs)


def peak_flops(device: torch.device, n: int = 4096, reps: int = 5) -> dict:
    """Measured FLOP/s of a large fp32 matmul (torch.mm, and oneDNN's matmul on the CPU when
    PyTorch has it): the machine's practical peak. Best of ``reps``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    flop = 2.0 * n**3
    out = {}

    def best(fn):
        fn()
        times = []
        for _ in range(reps):
            with Timer(device) as t:
                fn()
            times.append(t.wall)
        return flop / min(times)

    out["torch_mm"] = best(lambda: a @ b)
    if device.type == "cpu":
        try:
            bt = b.t().contiguous()
            out["onednn"] = best(lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none",
                                                                          [], ""))
        except Exception:  # noqa: BLE001 - PyTorch without oneDNN
            pass
    out["peak"] = max(out.values())
    out["matmul_size"] = n
    return out


# ------------------------------------------------------------ the benchmark
def model_flops_per_step(layers: list[list[int]], k: int, batch: int = BATCH) -> float:
    """FLOPs of the matrix products of one training step of one model (forward + backward =
    3 x forward, 2 FLOPs per multiply-add). Element-wise work is not counted."""
    macs = 0
    L = len(layers)
    dims = [X_DIM] + [s[-1] for s in layers]
    for level, spec in enumerate(layers):  # q(h_l | h_{l-1}); level 0 runs on the batch only
        rows = batch if level == 0 else k * batch
        sizes = [dims[level], *spec[:-1]]
        macs += rows * sum(a * b for a, b in zip(sizes, sizes[1:]))
        macs += rows * sizes[-1] * 2 * spec[-1]  # mean and log-std
    for level in range(L - 1, -1, -1):  # p(h_{l-1} | h_l) and p(x | h_1), on k * batch rows
        spec = layers[level]
        sizes = [spec[-1], *reversed(spec[:-1])]
        out = dims[level] * (1 if level == 0 else 2)
        macs += k * batch * (sum(a * b for a, b in zip(sizes, sizes[1:])) + sizes[-1] * out)
    return 2.0 * 3.0 * macs


def ops_per_step(cfgs, device, bias, batch: int, noise: str) -> dict:
    """The aten operations one fast step dispatches (forward, backward, Adam, noise), counted
    by a TorchDispatchMode on an eager step: a device-independent proxy for kernel launches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from iwae_tutorial.fleet.fast import _BlockRunner

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0
            self.rng = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            name = str(func)
            if any(w in name for w in ("rand", "normal", "bernoulli", "bitwise", "rshift",
                                       "lshift", "__xor__", "__and__", "__or__")):
                self.rng += 1
            return func(*args, **(kwargs or {}))

    members = [FleetMember(c.objective, c.k, c.seed, c.name) for c in cfgs]
    fl = Fleet(build_models(cfgs, device, bias), members)
    x = torch.rand(batch * 2, X_DIM, generator=torch.Generator().manual_seed(1)).to(device)
    opt = fl.make_optimizer(1e-3, graph=False)
    steps = _BlockRunner(fl, opt, x, batch, True, 1, False, noise)
    steps.new_epoch(0, 2)
    steps.one_step()  # Adam's state exists from here on
    with Count() as c:
        steps.one_step()
    return {"aten_ops": c.n, "noise_and_hash_ops": c.rng}


def time_fast(cfgs, device, bias, batch: int, steps: int, peak: float,
              noise: str = "counter") -> dict:
    """ms per step of the fast trainer with all 12 at ``batch`` (two timed epochs of ``steps``
    steps after a warm-up epoch, which includes the CUDA-graph capture), and the projected
    hours of the full table at that batch; ``noise``: the fast trainer's noise source."""
    from iwae_tutorial.fleet.fast import fit_fast, projected_hours

    members = [FleetMember(c.objective, c.k, c.seed, c.name) for c in cfgs]
    fl = Fleet(build_models(cfgs, device, bias), members)
    x = torch.rand(batch * steps, X_DIM, generator=torch.Generator().manual_seed(1))
    fit_fast(fl, x[: batch * min(steps, 20)], epochs=1, batch_size=batch, progress=False,
             noise=noise)
    with Timer(device) as t:
        res = fit_fast(fl, x, epochs=2, batch_size=batch, progress=False, noise=noise)
    ms = 1e3 * min(h["seconds"] for h in res.history[0]) / steps
    flops = sum(model_flops_per_step(c.layers, c.k, batch) for c in cfgs)
    print(f"fast trainer ({noise} noise), batch {batch}: {ms:.3f} ms per step of all 12",
          flush=True)
    return {"batch_size": batch, "noise": noise, "ms_per_fleet_step": ms,
            **ops_per_step(cfgs, device, bias, batch, noise),
            "cpu_ms_per_fleet_step": 1e3 * t.cpu / (2 * steps),
            "projected_full_table_hours": projected_hours(ms, batch),
            "fraction_of_peak": flops / (ms / 1e3) / peak,
            "model_gflop_per_step_of_all_12": flops / 1e9}


def build_models(cfgs, device, bias):
    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        models.append(IWAE(X_DIM, c.layers, output_bias=bias).to(device))
    return models


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-bmm-variant", action="store_true",
                   help="skip the fleet restricted to torch.bmm (CPU)")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's malloc defaults (by default stacked.tune_malloc() is "
                        "applied to the whole process: plain loops and fleet alike)")
    p.add_argument("--fast-batches", type=int, nargs="*", default=None, metavar="B",
                   help="also time the fast trainer (iwae_tutorial.fleet.fast: counter-based "
                        "noise, CUDA-graph blocks) at these batch sizes (default: 20 and 500 "
                        "on CUDA, none on the CPU)")
    p.add_argument("--fast-steps", type=int, default=100,
                   help="steps per timed epoch of the fast trainer (default 100)")
    p.add_argument("--fast-noise", nargs="+", default=["counter", "device"],
                   choices=("counter", "device"),
                   help="the fast trainer's noise sources to time (default both)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the JSON result to FILE")
    args = p.parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    load_before = load_average()

    cfgs = table1_configs("mnist")
    n = BATCH * args.steps
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, X_DIM, generator=g)  # grey images; binarized per batch like MNIST
    x_warm = x[: 2 * BATCH]
    bias = torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3))

    plain_models = build_models(cfgs, device, bias)
    variants = {"fleet": "auto"}
    if device.type == "cpu" and not args.no_bmm_variant:
        variants["fleet_bmm_only"] = "bmm"
        from iwae_tutorial.fleet.stacked import onednn_available

        if onednn_available():
            variants["fleet_onednn_only"] = "onednn"
    fleets = {}
    for name, gemm in variants.items():
        members = [FleetMember(c.objective, c.k, c.seed, c.name) for c in cfgs]
        fleets[name] = Fleet(build_models(cfgs, device, bias), members, gemm=gemm)

    # warm-up (allocations, oneDNN primitives, CUDA graph capture)
    for c, m in zip(cfgs, plain_models):
        fit(m, x_warm, objective=c.objective, k=c.k, epochs=1, seed=c.seed, progress=False)
    for fl in fleets.values():
        fl.fit(x_warm, epochs=1, progress=False, handle_signals=False)

    plain = {c.name: {"wall": [], "cpu": []} for c in cfgs}
    fleet_t = {name: {"wall": [], "cpu": []} for name in fleets}
    for r in range(args.rounds):
        for c, m in zip(cfgs, plain_models):
            with Timer(device) as t:
                fit(m, x, objective=c.objective, k=c.k, epochs=1, seed=c.seed + r + 1,
                    progress=False)
            plain[c.name]["wall"].append(t.wall / args.steps)
            plain[c.name]["cpu"].append(t.cpu / args.steps)
        for name, fl in fleets.items():
            with Timer(device) as t:
                fl.fit(x, epochs=1, progress=False, handle_signals=False)
            fleet_t[name]["wall"].append(t.wall / args.steps)
            fleet_t[name]["cpu"].append(t.cpu / args.steps)
        total = sum(v["wall"][-1] for v in plain.values())
        print(f"round {r + 1}/{args.rounds}: plain loops {1e3 * total:.1f} ms per step of all "
              "12; " + ", ".join(f"{k} {1e3 * v['wall'][-1]:.1f} ms" for k, v in
                                 fleet_t.items()) + f"; load {load_average()}", flush=True)

    per_cfg = {}
    for c in cfgs:
        w, cp = median(plain[c.name]["wall"]), median(plain[c.name]["cpu"])
        per_cfg[c.name] = {"steps_per_s": 1 / w, "ms_per_step": 1e3 * w,
                           "cpu_ms_per_step": 1e3 * cp,
                           "model_gflop_per_step": model_flops_per_step(c.layers, c.k) / 1e9}
    # per-round sums, so each round's plain total is compared with the same round's fleet
    rounds_plain = [sum(plain[c.name]["wall"][r] for c in cfgs) for r in range(args.rounds)]
    rounds_plain_cpu = [sum(plain[c.name]["cpu"][r] for c in cfgs) for r in range(args.rounds)]
    plain_step = median(rounds_plain)  # seconds for one step of each of the 12 models
    flops_fleet_step = sum(model_flops_per_step(c.layers, c.k) for c in cfgs)
    peak = peak_flops(device)

    result = {
        **run_header("train_throughput", device, malloc_tuned, load_before),
        "steps_timed": args.steps,
        "rounds": args.rounds,
        "batch_size": BATCH,
        "plain_loop": {
            "per_configuration": per_cfg,
            "ms_for_one_step_of_all_12": 1e3 * plain_step,
            "config_steps_per_s": 12 / plain_step,
            "cpu_ms_for_one_step_of_all_12": 1e3 * median(rounds_plain_cpu),
        },
        "model_gflop_per_step_of_all_12": flops_fleet_step / 1e9,
        "peak_flops": {k: v for k, v in peak.items()},
    }
    for name, fl in fleets.items():
        w = median(fleet_t[name]["wall"])
        ratios = [rp / fw for rp, fw in zip(rounds_plain, fleet_t[name]["wall"])]
        ratios_cpu = [rp / fc for rp, fc in zip(rounds_plain_cpu, fleet_t[name]["cpu"])]
        result[name] = {
            "gemm": fl.gemm,
            "ms_per_fleet_step": 1e3 * w,
            "fleet_steps_per_s": 1 / w,
            "config_steps_per_s": 12 / w,
            "cpu_ms_per_fleet_step": 1e3 * median(fleet_t[name]["cpu"]),
            "speedup": median(ratios),
            "speedup_per_round": ratios,
            "speedup_cpu_time": median(ratios_cpu),
            "achieved_flops": flops_fleet_step / w,
            "fraction_of_peak": flops_fleet_step / w / peak["peak"],
        }
    f = result["fleet"]
    result["speedup"] = f["speedup"]
    result["fraction_of_peak_flops"] = f["fraction_of_peak"]
    result["plain_fraction_of_peak_flops"] = flops_fleet_step / plain_step / peak["peak"]
    steps_full = FULL_EPOCHS * STEPS_PER_EPOCH
    result["projected_full_table_hours"] = steps_full * f["ms_per_fleet_step"] / 1e3 / 3600
    result["projected_full_table_hours_plain"] = steps_full * plain_step / 3600
    fast_batches = args.fast_batches if args.fast_batches is not None else (
        [20, 500] if device.type == "cuda" else [])
    if fast_batches:
        result["fast"] = {f"{b}-{src}" if src != "counter" else str(b):
                          time_fast(cfgs, device, bias, b, args.fast_steps, peak["peak"], src)
                          for b in fast_batches for src in args.fast_noise}
        for entry in result["fast"].values():  # per image, vs the plain loops at batch 20
            entry["speedup_vs_plain_per_image"] = (
                plain_step / BATCH) / (entry["ms_per_fleet_step"] / 1e3 / entry["batch_size"])
    result["notes"] = (
        "speedup = fleet throughput / plain loops' combined throughput (configuration-steps "
        "per second, wall time, median over interleaved rounds); speedup_cpu_time uses process "
        "CPU time instead (less sensitive to other jobs on a shared machine). FLOPs count the "
        "matrix products only (3 x forward). Projection: 3,280 epochs x 2,980 steps, training "
        "only (no evaluation).")
    return report(result, args.out)


if __name__ == "__main__":
    main()
