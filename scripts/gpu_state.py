"""The device job's luggage: what it checks first, and the state it carries between windows.

    python scripts/gpu_state.py preflight --device cuda --out checks-preflight.json
    python scripts/gpu_state.py pack RUN_DIR OUT_DIR          # state.tar.xz.part-NN files
    python scripts/gpu_state.py unpack PARTS_DIR RUN_ROOT     # back into RUN_ROOT/<run>/
    python scripts/gpu_state.py models RUN_DIR OUT_FILE       # furthest scored stage, float16
    python scripts/gpu_state.py size RUN_DIR [DATA_DIR]       # bytes a command must carry

**What travels.** A window of the device returns at most 8 files of at most 16 MiB, and at
most 64 MiB go with a command. The state that continues a reproduce run is its run folder
without the stages' saved weights (``stages/*/*/checkpoint.pt`` and the ``fleet.json`` that
marks them complete): a scored stage needs them no more (its scores are in ``stages.pt``),
and a stage trained but not yet scored gets them back from the fleet's state (training
resumes at that very epoch, so nothing is retrained). The fast trainer keeps Adam's moments in
bfloat16 (``fast.fit_fast(moments="bfloat16")``). The folder is packed as one xz-compressed
tar, cut into parts of at most 15 MiB (``state.tar.xz.part-00``, ...), which ``unpack`` joins,
checks (no absolute paths, no ``..``, no links) and extracts.

Exit status 2 with one line on bad input; 1 when a preflight check fails.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

PART_BYTES = 15 << 20
PART_GLOB = "state.tar.xz.part-*"


def _skip(rel: Path) -> bool:
    """Files of the run folder that do not travel (see the module docstring)."""
    parts = rel.parts
    if "stages" in parts:
        i = parts.index("stages")
        tail = parts[i + 1:]
        if (len(tail) == 3 and tail[2] == "checkpoint.pt") or (
                len(tail) == 2 and tail[1] == "fleet.json"):
            return True
    return rel.name == ".lock" or rel.name.endswith(".tmp")


def state_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` that travel, relative to its parent (sorted)."""
    out = []
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir.parent)
        if p.is_file() and not p.is_symlink() and not _skip(p.relative_to(run_dir)):
            out.append(rel)
    return out


def pack(run_dir: Path, out_dir: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """``run_dir``'s travelling state as ``out_dir/state.tar.xz.part-NN`` (old parts removed).
    -> the parts written."""
    if not run_dir.is_dir():
        raise SystemExit(f"gpu_state pack: no run folder {run_dir}")
    buf = io.BytesIO()
    with lzma.open(buf, "wb", preset=3) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for rel in state_files(run_dir):
            tar.add(run_dir.parent / rel, arcname=str(rel), recursive=False)
    data = buf.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(PART_GLOB):
        old.unlink()
    parts = []
    for i in range(0, max(len(data), 1), part_bytes):
        p = out_dir / f"state.tar.xz.part-{i // part_bytes:02d}"
        p.write_bytes(data[i:i + part_bytes])
        parts.append(p)
    return parts


def unpack(parts_dir: Path, run_root: Path) -> list[str]:
    """Join ``parts_dir/state.tar.xz.part-*``, check every member and extract into
    ``run_root``. -> the run folders extracted."""
    parts = sorted(parts_dir.glob(PART_GLOB))
    if not parts:
        raise SystemExit(f"gpu_state unpack: no {PART_GLOB} in {parts_dir}")
    numbers = [int(p.name.rsplit("-", 1)[1]) for p in parts]
    if numbers != list(range(len(parts))):
        raise SystemExit(f"gpu_state unpack: the parts in {parts_dir} are not numbered "
                         f"00..{len(parts) - 1:02d} (found {', '.join(p.name for p in parts)}); "
                         "bring back every part")
    data = b"".join(p.read_bytes() for p in parts)
    try:
        with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                name = Path(m.name)
                if (name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir())):
                    raise SystemExit(f"gpu_state unpack: {parts[0]} holds {m.name!r}, which is "
                                     "not a plain file inside the run folder; not extracted")
            run_root.mkdir(parents=True, exist_ok=True)
            tar.extractall(run_root, members=members, filter="data")
    except (lzma.LZMAError, tarfile.TarError, EOFError) as e:
        raise SystemExit(f"gpu_state unpack: the parts in {parts_dir} are not a whole state "
                         f"({type(e).__name__}: {e}); bring them back again") from None
    return sorted({Path(m.name).parts[0] for m in members})


def save_models(run_dir: Path, out_file: Path) -> list[str]:
    """The members of each fleet's furthest saved stage, float16, in one file."""
    import torch

    from iwae_tutorial.runs import load_run

    models = {}
    for part in ("1L", "2L"):
        stages = sorted(d for d in (run_dir / part / "stages").glob("epoch-*")
                        if (d / "fleet.json").exists())
        if not stages:
            continue
        for d in sorted(p for p in stages[-1].iterdir() if p.is_dir()):
            model, cfg, history = load_run(d)
            models[d.name] = {"model": {k: v.half() for k, v in model.state_dict().items()},
                              "model_config": model.config, "epochs": len(history)}
    if models:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"members": models, "dtype": "float16"}, out_file)
    return sorted(models)


def carried_bytes(run_dir: Path, data_dir: Path | None) -> dict:
    """What a command carries to continue the run: the packed state, plus the MNIST files."""
    tmp = run_dir.parent / f".size-{os.getpid()}"
    try:
        state = sum(p.stat().st_size for p in pack(run_dir, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = 0
    if data_dir is not None:
        data = sum(p.stat().st_size for p in (data_dir / "mnist").glob("*.gz"))
    return {"state_bytes": state, "data_bytes": data, "total_bytes": state + data,
            "state_unpacked_bytes": sum((run_dir.parent / r).stat().st_size
                                        for r in state_files(run_dir))}


def preflight(device: str, out: Path | None) -> int:
    """Imports, data and free memory, in seconds: a bad window is found before it is spent."""
    t0 = time.perf_counter()
    checks: dict = {}
    try:
        import torch

        import iwae_tutorial  # noqa: F401
        checks["imports"] = {"ok": True, "torch": torch.__version__}
    except ImportError as e:
        checks["imports"] = {"ok": False, "error": str(e)}
        torch = None
    if torch is not None:
        try:
            from iwae_tutorial.data import load_dataset

            ds = load_dataset("mnist", download=False)
            checks["data"] = {"ok": True, "n_train": int(ds.x_train.shape[0]),
                              "n_test": int(ds.x_test.shape[0])}
        except Exception as e:  # noqa: BLE001 - reported, not raised
            checks["data"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        if device == "cuda":
            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info()
                checks["gpu_memory"] = {"ok": free > 4 << 30, "free_gib": free / 2**30,
                                        "total_gib": total / 2**30,
                                        "name": torch.cuda.get_device_name()}
            else:
                checks["gpu_memory"] = {"ok": False, "error": "torch sees no CUDA device"}
    disk = shutil.disk_usage(Path.cwd())
    checks["disk"] = {"ok": disk.free > 1 << 30, "free_gib": disk.free / 2**30}
    ok = all(c["ok"] for c in checks.values())
    result = {"ok": ok, "checks": checks, "seconds": time.perf_counter() - t0}
    text = json.dumps(result, indent=1)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("preflight")
    a.add_argument("--device", default="cuda")
    a.add_argument("--out", type=Path, default=None)
    a = sub.add_parser("pack")
    a.add_argument("run_dir", type=Path)
    a.add_argument("out_dir", type=Path)
    a = sub.add_parser("unpack")
    a.add_argument("parts_dir", type=Path)
    a.add_argument("run_root", type=Path)
    a = sub.add_parser("models")
    a.add_argument("run_dir", type=Path)
    a.add_argument("out_file", type=Path)
    a = sub.add_parser("size")
    a.add_argument("run_dir", type=Path)
    a.add_argument("data_dir", type=Path, nargs="?", default=None)
    args = p.parse_args(argv)
    try:
        if args.cmd == "preflight":
            return preflight(args.device, args.out)
        if args.cmd == "pack":
            parts = pack(args.run_dir, args.out_dir)
            print("state:", ", ".join(f"{q.name} ({q.stat().st_size} bytes)" for q in parts))
        elif args.cmd == "unpack":
            print("unpacked:", ", ".join(unpack(args.parts_dir, args.run_root)))
        elif args.cmd == "models":
            names = save_models(args.run_dir, args.out_file)
            print(f"models: {len(names)} in {args.out_file}" if names else "models: none saved")
        else:
            print(json.dumps(carried_bytes(args.run_dir, args.data_dir)))
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
