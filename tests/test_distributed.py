"""``reproduce`` under ``torchrun``: the ranks' shares of the fleets, and one result file equal,
configuration by configuration and bit for bit, to a single process's (MNIST when present:
``IWAE_DATA_DIR`` or the user cache); the helpers of :mod:`iwae_tutorial.distributed`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import seeded_model

import iwae_tutorial
from iwae_tutorial import cli
from iwae_tutorial import reproduce as rp
from iwae_tutorial.blockeval import evaluate_in_blocks
from iwae_tutorial.distributed import (
    Ranks,
    WorldSizeError,
    gather,
    merge_shards,
    shard,
    shard_fleet,
)

SMOKE = ["--dataset", "mnist", "--budget", "smoke", "--no-progress", "--no-download",
         "--device", "cpu", "--threads", "1", "--gemm", "bmm"]
#: what may differ between a cell of a sharded run and the same cell of one process
WHERE_AND_WHEN = ("run_dir", "wall_time_s")


def torchrun(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m iwae_tutorial reproduce`` (smoke budget)
    into tmp_path/runs and tmp_path/results, running this checkout's package."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(iwae_tutorial.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "iwae_tutorial", "reproduce", *SMOKE, "--run-root",
           str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def cells(result: dict) -> list[tuple]:
    """Every cell of the result (each stage's, then the furthest), less where and when."""
    recs = [c for s in result["stages"] for c in s["configurations"]]
    return [(c["name"], {k: v for k, v in c.items() if k not in WHERE_AND_WHEN})
            for c in recs + result["configurations"]]


def test_torchrun_two_ranks_equal_one_process_and_resume(tmp_path):
    """Stopped at once (every rank's state saved), resumed to the end, then run again (nothing
    to do): one result file, every cell equal to one process's (exactly: a rank trains whole
    training groups and evaluates as the whole fleet does)."""
    from iwae_tutorial.data import DataError, load_mnist

    try:
        load_mnist(download=False)
    except DataError as e:
        pytest.skip(f"MNIST is not available here (set IWAE_DATA_DIR): {str(e)[:120]}")
    status, one = rp.reproduce("mnist", "smoke", run_root=tmp_path / "one",
                               results_dir=tmp_path / "one-results", device="cpu", gemm="bmm",
                               download=False, progress=False, verbose=False)
    assert status == "done"
    ref = json.loads(one.read_text())

    stopped = torchrun(tmp_path, "--max-minutes", "0.002")  # a step, then each rank stops
    assert stopped.returncode != 0 and "stopped before the end" in stopped.stderr, \
        stopped.stderr[-3000:]
    run = tmp_path / "runs" / "mnist-smoke"
    assert sorted(p.name for p in run.iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    assert all((run / r / "1L" / "fleet.pt").exists() for r in ("rank-0-of-2", "rank-1-of-2"))
    assert not (tmp_path / "results").exists()  # nothing scored yet: nothing written

    out = torchrun(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("wrote ") == 1 and "mnist-iwae-k50-2L-s0" in out.stdout
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["mnist-smoke.json"]
    path = tmp_path / "results" / "mnist-smoke.json"
    got = json.loads(path.read_text())
    assert got["status"] == "complete" and got["trainer"]["ranks"] == 2
    assert got["protocol"] == ref["protocol"]
    assert cells(got) == cells(ref)  # NLL, per-image L_k, train bounds, active units, ...
    homes = {c["name"]: Path(c["run_dir"]).parts[-5] for c in got["configurations"]}
    assert homes["mnist-iwae-k1-1L-s0"] == homes["mnist-vae-k1-1L-s0"]  # the alias's twin
    assert homes["mnist-vae-k50-1L-s0"] != homes["mnist-vae-k50-2L-s0"]  # a k=50 fleet each
    assert all(Path(c["run_dir"]).is_dir() for c in got["configurations"])

    weights = sorted(run.glob("rank-*/*/stages/epoch-*/*/checkpoint.pt"))
    assert len(weights) == 10
    stamps = [p.stat().st_mtime_ns for p in weights]
    again = torchrun(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stderr and "evaluating" not in again.stderr
    assert [p.stat().st_mtime_ns for p in weights] == stamps
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["mnist-smoke.json"]
    assert cells(json.loads(path.read_text())) == cells(ref)


def test_too_many_ranks_is_one_line_from_rank_0(tmp_path, monkeypatch, capsys):
    """Four ranks for three training groups per fleet: status 2 on every rank, the error
    printed once (by rank 0), nothing created."""
    args = ["reproduce", *SMOKE, "--run-root", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--no-malloc-tuning"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    for rank in range(4):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        if rank == 0:
            assert len(err) == 1 and "4 ranks for 3 training groups" in err[0], err
            assert "--nproc-per-node 3" in err[0]
        else:
            assert err == []
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_ranks_from_the_environment():
    assert Ranks.from_env({}) == Ranks(0, 1, 0)
    r = Ranks.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert (r.rank, r.world, r.local_rank, r.is_main) == (1, 2, 1, False)
    assert r.state_dir(Path("runs/x")) == Path("runs/x/rank-1-of-2")
    assert Ranks().state_dir(Path("runs/x")) == Path("runs/x")  # one process: as before
    assert r.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert r.device(torch.device("cpu")) == torch.device("cpu")
    assert Ranks().device(torch.device("cuda")) == torch.device("cuda")
    for bad in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"},
                {"WORLD_SIZE": "0"}):
        with pytest.raises(ValueError, match="WORLD_SIZE"):
            Ranks.from_env(bad)
    assert gather({"a": 1}, Ranks()) == [{"a": 1}]  # one rank: no process group needed


def test_shares_are_whole_groups_and_merge_back():
    groups = [1, 5, 50, 5, 50]  # table 1's trained cells of one fleet: their k
    assert shard(groups, Ranks(0, 2)) == [0, 2, 4] and shard(groups, Ranks(1, 2)) == [1, 3]
    assert shard(groups, Ranks(0, 2), offset=1) == [1, 3]  # the other fleet: dealt from rank 1
    assert [shard(groups, Ranks(r, 3)) for r in range(3)] == [[0], [1, 3], [2, 4]]
    with pytest.raises(WorldSizeError, match="4 ranks for 3") as e:
        shard(groups, Ranks(1, 4))
    assert e.value.quiet  # rank 0 says it
    cfgs = ["vae1", "vae5", "vae50", "iwae5", "iwae50"]
    aliases = {"iwae1": ("iwae1-cfg", 0)}
    idx, mine, al = shard_fleet(cfgs, aliases, Ranks(1, 3), lambda c: c.strip("iwaev"))
    assert (idx, mine, al) == ([1, 3], ["vae5", "iwae5"], {})
    idx, mine, al = shard_fleet(cfgs, aliases, Ranks(0, 2), lambda c: c.strip("iwaev"))
    assert (mine, al) == (["vae1", "vae50", "iwae50"], aliases)

    ll = torch.arange(10.0).view(5, 2)
    pieces = [{"members": i, "ll": ll[i], "names": [cfgs[j] for j in i], "where": f"r{r}",
               "seconds": {"train": 1.0 + r}, "other": r}
              for r, i in enumerate([[0, 2, 4], [1, 3]])]
    m = merge_shards(pieces, ("ll", "names"), ("where",), ("seconds",))
    assert torch.equal(m["ll"], ll) and m["names"] == cfgs and "members" not in m
    assert m["by_member"] == {"where": ["r0", "r1", "r0", "r1", "r0"]}
    assert m["seconds"] == {"train": 2.0} and m["other"] == 0
    with pytest.raises(ValueError, match="one fleet"):
        merge_shards(pieces[:1], ("ll",))


@pytest.mark.parametrize("layers", [[(16, 2)], [(16, 2), (8, 2)]])
def test_a_share_of_a_fleet_scores_as_the_whole_fleet(tmp_path, layers):
    """Evaluated with ``stack_size`` = the fleet's size, any share (a lone model included)
    gets exactly the L_k it gets evaluated with the whole fleet: the noise is drawn in the
    fleet's chunks (16 samples here, 26 for three models alone), and a lone model is stacked
    with its copy."""
    models = [seeded_model(layers, seed=s, dim=20).eval() for s in range(5)]
    x = (torch.rand(100, 20, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def score(ms, name, **extra):
        return evaluate_in_blocks(ms, x, 50, tmp_path / name, {"m": len(ms)}, noise_seed=3,
                                  batch_size=100, block=100, gemm="bmm", **extra)["ll"]

    whole = score(models, "whole.pt")
    for share in ([0, 2, 4], [1, 3], [2]):
        got = score([models[i] for i in share], f"{share}.pt", stack_size=5)
        assert got.shape == (len(share), 100) and torch.equal(got, whole[share]), share
    if len(layers) == 2:  # without: other chunks, so other noise for the second layer
        alone = score([models[i] for i in (0, 2, 4)], "alone.pt")
        assert (alone - whole[[0, 2, 4]]).abs().max() > 1e-3
