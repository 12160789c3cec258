"""Correctness checks to run on a device before spending its time on the table.

1. exact fleet == train.fit: two members of the exact fleet (CUDA graph on CUDA) against the
   same models trained alone by ``fit``, a few steps (float32; equal up to rounding);
2. fused evaluation == reference: ``evaluate.log_likelihood`` with ``kernel="fused"`` against
   ``kernel="reference"`` (same noise);
3. fast trainer, graph == eager: ``fast.fit_fast`` with and without the CUDA graph, for both
   noise sources (same numbers, so equal up to rounding; on the CPU it is skipped);
4. counter-based noise is the same on the device as on the CPU (integer hashing: bit for bit);
5. the fast trainer with the device generator's noise, stopped and resumed, equals the run in
   one go (the generator's state travels with the run).

Writes one JSON object (``--out``) and exits 1 when a check fails. ``--device cpu`` runs the
same code on the CPU (the dry run of ``scripts/gpu_job.sh``). Needs only torch and the package
(``PYTHONPATH=src``), no data files: the checks use random grey images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def check_fleet_vs_fit(device: torch.device) -> dict:
    from iwae_tutorial.fleet import Fleet, FleetMember
    from iwae_tutorial.models import IWAE
    from iwae_tutorial.train import fit

    x = torch.rand(100, 784, generator=torch.Generator().manual_seed(0))
    specs = [("iwae", 5, 0), ("vae", 1, 1)]

    def model(seed):
        torch.manual_seed(seed)
        return IWAE(784, [(200, 200, 50)]).to(device)

    fleet = Fleet([model(s) for _, _, s in specs], [FleetMember(o, k, s, f"{o}{k}")
                                                   for o, k, s in specs])
    fleet.fit(x, epochs=1, batch_size=20, progress=False, handle_signals=False)
    diffs = []
    for i, (o, k, s) in enumerate(specs):
        alone = model(s)
        fit(alone, x, objective=o, k=k, epochs=1, batch_size=20, seed=s, progress=False)
        diffs.append(_max_diff(fleet.state_dict_of(i), alone.state_dict()))
    return {"max_param_diff": max(diffs), "ok": max(diffs) < 1e-3}


def check_fused_eval(device: torch.device) -> dict:
    from iwae_tutorial.evaluate import log_likelihood
    from iwae_tutorial.models import IWAE

    torch.manual_seed(0)
    m = IWAE(784, [(200, 200, 100), (100, 100, 50)]).to(device).eval()
    x = torch.bernoulli(torch.rand(20, 784, generator=torch.Generator().manual_seed(1)))
    out = {}
    for kernel in ("fused", "reference"):
        g = torch.Generator(device=device).manual_seed(0)
        out[kernel] = log_likelihood(m, x, 200, batch_size=10, chunk_size=50, generator=g,
                                     kernel=kernel)
    d = float((out["fused"] - out["reference"]).abs().max())
    return {"max_abs_diff_nats": d, "ok": d < 1e-2}


def _table_fleet(cfgs, device: torch.device):
    """A fleet of ``cfgs`` (Table 1 configurations), each member initialised by its seed."""
    from iwae_tutorial.fleet import Fleet, FleetMember
    from iwae_tutorial.models import IWAE

    models = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        models.append(IWAE(784, c.layers).to(device))
    return Fleet(models, [FleetMember(c.objective, c.k, c.seed, c.name) for c in cfgs])


def check_fast_graph_vs_eager(device: torch.device) -> dict:
    from iwae_tutorial.fleet import table1_configs
    from iwae_tutorial.fleet.fast import fit_fast

    if device.type != "cuda":
        return {"ok": True, "skipped": "no CUDA graph on the CPU (eager twin tested by pytest)"}
    cfgs = table1_configs("mnist", epochs=1)
    x = torch.rand(200, 784, generator=torch.Generator().manual_seed(2))

    out: dict = {"ok": True}
    for source in ("counter", "device"):  # the device generator: graph-safe Philox
        a, b = _table_fleet(cfgs, device), _table_fleet(cfgs, device)
        fit_fast(a, x, epochs=2, batch_size=20, cuda_graph=True, block=5, progress=False,
                 noise=source)
        fit_fast(b, x, epochs=2, batch_size=20, cuda_graph=False, progress=False, noise=source)
        d = max(_max_diff(a.state_dict_of(i), b.state_dict_of(i)) for i in range(len(cfgs)))
        out[f"max_param_diff_{source}"] = d
        out["ok"] = out["ok"] and d < 1e-3
    return out


def check_fast_resume_on_device(device: torch.device) -> dict:
    """Stopped after epoch 1 and resumed (device-generator noise, CUDA graph, state saved and
    read back) == two epochs in one go, up to rounding."""
    import tempfile

    from iwae_tutorial.fleet import table1_configs
    from iwae_tutorial.fleet.fast import fit_fast

    cfgs = table1_configs("mnist", epochs=1)[:3]
    x = torch.rand(200, 784, generator=torch.Generator().manual_seed(3))

    a, b = _table_fleet(cfgs, device), _table_fleet(cfgs, device)
    fit_fast(a, x, epochs=2, batch_size=20, progress=False, noise="device")
    with tempfile.TemporaryDirectory() as tmp:
        first = fit_fast(b, x, epochs=2, batch_size=20, progress=False, noise="device",
                         run_dir=tmp, max_seconds=0.0, handle_signals=False)
        b2 = _table_fleet(cfgs, device)
        fit_fast(b2, x, epochs=2, batch_size=20, progress=False, noise="device", run_dir=tmp,
                 handle_signals=False)
    d = max(_max_diff(a.state_dict_of(i), b2.state_dict_of(i)) for i in range(len(cfgs)))
    return {"stopped_after": first.epochs_done, "max_param_diff": d, "ok": d < 1e-3}


def check_noise_portable(device: torch.device) -> dict:
    from iwae_tutorial.fleet import noise

    seeds = noise.seed_tensor([0, 7, 2**40])
    cpu = noise.uniform(seeds, "noise", 12345, (1000,))
    dev = noise.uniform(seeds.to(device), "noise", 12345, (1000,)).cpu()
    return {"identical": bool(torch.equal(cpu, dev)), "ok": bool(torch.equal(cpu, dev))}


CHECKS = {"fleet_vs_fit": check_fleet_vs_fit, "fused_eval_vs_reference": check_fused_eval,
          "fast_graph_vs_eager": check_fast_graph_vs_eager,
          "fast_resume_device_noise": check_fast_resume_on_device,
          "noise_same_on_device": check_noise_portable}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = {"device": str(device), "torch": torch.__version__,
              "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                              else "cpu"), "checks": {}}
    for name, fn in CHECKS.items():
        t0 = time.perf_counter()
        try:
            r = fn(device)
        except Exception as e:  # noqa: BLE001 - report and carry on with the other checks
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        r["seconds"] = round(time.perf_counter() - t0, 2)
        result["checks"][name] = r
        print(f"check {name}: {'ok' if r['ok'] else 'FAILED'} {r}", flush=True)
    result["ok"] = all(r["ok"] for r in result["checks"].values())
    if args.out:
        from iwae_tutorial.checkpoints import write_json_atomic

        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
