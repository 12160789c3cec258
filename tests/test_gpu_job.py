"""The device job (scripts/gpu_job.sh) and its luggage (scripts/gpu_state.py), on the CPU.

The ``gpujob`` test runs the job's dry run twice: killed by SIGTERM half way through the table,
then continued from what the first left in $OUT on a fresh "machine" (an empty job folder).
"""

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "scripts" / "gpu_job.sh"
MIB = 1 << 20


def gpu_state():
    spec = importlib.util.spec_from_file_location("gpu_state", ROOT / "scripts" / "gpu_state.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def mnist_dir() -> Path:
    d = os.environ.get("IWAE_DATA_DIR")
    if not d or not (Path(d) / "mnist").is_dir():
        pytest.skip("MNIST not available (set IWAE_DATA_DIR)")
    return Path(d)


def test_the_table_state_plus_data_travels_in_under_48_mib(tmp_path):
    """The ten trained models of Table 1 (the k = 1 IWAE is the k = 1 VAE) at full size, their
    fast-trainer state with bfloat16 moments, the scored stages, packed as the job packs them,
    plus the MNIST files: under 48 MiB (a command carries at most 64 MiB with the work tree),
    in parts of at most 15 MiB."""
    from iwae_tutorial.reproduce import reproduce

    data = mnist_dir()
    torch.set_num_threads(1)
    status, _ = reproduce("mnist", "dry", run_root=tmp_path / "runs",
                          results_dir=tmp_path / "res", device="cpu", trainer="fast-device",
                          batch_size=20, download=False, progress=False, verbose=False,
                          until_epochs=1)
    assert status.startswith("stopped after epoch 1")
    run = tmp_path / "runs" / "mnist-dry-fast-device"
    gs = gpu_state()
    size = gs.carried_bytes(run, data)
    assert size["total_bytes"] < 48 * MIB, size
    # without the compression too, the parameters and moments fit beside the data
    assert size["state_unpacked_bytes"] + size["data_bytes"] < 48 * MIB, size
    parts = gs.pack(run, tmp_path / "out")
    assert all(p.stat().st_size <= 15 * MIB for p in parts) and len(parts) <= 3
    from iwae_tutorial.shards import load_sharded

    state = load_sharded(run / "1L" / "fast-state")
    assert {v.dtype for st in state["optimizer"]["state"].values()
            for k, v in st.items() if k.startswith("exp_avg")} == {torch.bfloat16}
    gs.unpack(tmp_path / "out", tmp_path / "again")  # and back: the same files
    back = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*")
                  if p.is_file())
    assert back == gs.state_files(run)


def test_unpack_refuses_what_is_not_a_run_folder(tmp_path, capsys):
    import lzma

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "state.tar.xz.part-00").write_bytes(lzma.compress(buf.getvalue()))
    gs = gpu_state()
    assert gs.main(["unpack", str(tmp_path), str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a plain file inside the run folder" in err[0]
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "state.tar.xz.part-02").write_bytes(b"x")  # a part missing
    assert gs.main(["unpack", str(tmp_path), str(tmp_path / "root")]) == 2
    assert "bring back every part" in capsys.readouterr().err


def _job(out: Path, home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OUT": str(out), "GPU_JOB_HOME": str(home),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(["bash", str(JOB), "--dry-run", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stages(path: Path) -> list:
    try:
        return json.loads(path.read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.gpujob
def test_dry_run_killed_half_way_then_continued_from_its_out(tmp_path):
    mnist_dir()
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    result = "results/mnist-dry-fast-device.json"
    job = _job(out1, tmp_path / "machine1")
    deadline = time.time() + 600
    while time.time() < deadline and job.poll() is None and not _stages(out1 / result):
        time.sleep(0.2)
    assert job.poll() is None, "the dry run ended before its first stage was scored"
    job.send_signal(signal.SIGTERM)  # half way: stage 1 scored, stage 4 not yet
    log1, _ = job.communicate(timeout=300)
    assert job.returncode == 143, log1
    for name in ("job.log", "preflight.json", "checks.json", "benchmark-train.json", result):
        assert (out1 / name).is_file(), (name, log1)
    first = json.loads((out1 / result).read_text())
    assert first["status"] == "partial" and [s["epochs"] for s in first["stages"]] == [1]
    parts = sorted((out1 / "state").glob("state.tar.xz.part-*"))
    assert parts and len(list(out1.rglob("*.*"))) <= 8
    assert "SIGTERM" in (out1 / "job.log").read_text()

    job = _job(out2, tmp_path / "machine2", "--state", str(out1 / "state"))  # a fresh machine
    log2, _ = job.communicate(timeout=600)
    assert job.returncode == 0, log2
    assert "continued from" in (out2 / "job.log").read_text()
    second = json.loads((out2 / result).read_text())
    assert second["status"] == "complete"
    assert [s["epochs"] for s in second["stages"]] == [1, 4]
    keys = ("nll", "ll_per_image", "train_bound", "active_units")
    again = {c["name"]: c for c in second["stages"][0]["configurations"]}
    for cell in first["stages"][0]["configurations"]:  # what window 1 scored, window 2 kept
        assert {k: cell[k] for k in keys} == {k: again[cell["name"]][k] for k in keys}
    assert not (out2 / "state").exists()  # finished: nothing to carry on
    assert len([p for p in out2.rglob("*") if p.is_file()]) <= 8
