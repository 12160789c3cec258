"""The trained models and result files that ship inside the package: small, safe to load,
with their provenance, and the ones the chapters ask for."""

from __future__ import annotations

import json

import pytest
import torch

from iwae_tutorial.paper import ONE_LAYER
from iwae_tutorial.results import published_dir
from iwae_tutorial.runs import SHIPPED_DIR, RunConfig, find_trained, load_model_file, load_or_train

MAX_BYTES = 5 << 20  # models and result files together: a few MB, so pip install stays light
PROVENANCE = {"git_commit", "command", "date_utc", "device", "torch_version"}

#: what the chapters load: (dataset, objective, k, layers, seed or None)
CHAPTER_MODELS = [
    *[("camel", o, k, [[5, 5, 1]], s) for s in range(5) for o, k in (("vae", 1), ("iwae", 20))],
    *[("mnist", o, 50, [[200, 200, 2]], None) for o in ("vae", "iwae")],
    *[("mnist", o, 5, [list(s) for s in ONE_LAYER], None) for o in ("vae", "iwae")],
]


def shipped() -> list:
    return sorted(SHIPPED_DIR.glob("*.pt"))


def test_the_package_data_is_small():
    results = published_dir()
    assert results is not None
    files = shipped() + sorted(SHIPPED_DIR.glob("*.json")) + sorted(results.glob("*.json"))
    total = sum(f.stat().st_size for f in files)
    assert total <= MAX_BYTES, f"{total / 2**20:.1f} MiB of package data"


@pytest.mark.parametrize("dataset, objective, k, layers, seed", CHAPTER_MODELS)
def test_each_chapter_model_ships_with_its_provenance(dataset, objective, k, layers, seed):
    found = find_trained(dataset, objective, k, layers, seed=seed)
    assert found is not None, f"no shipped model for {dataset} {objective} k={k} seed={seed}"
    path, meta = found
    assert path.parent == SHIPPED_DIR
    assert PROVENANCE <= set(meta["provenance"]), meta["provenance"]
    assert len(meta["provenance"]["git_commit"]) == 40
    assert meta["epochs"] >= 10 and meta["eval_k"] == 5000 and meta["eval_n"] >= 1000
    # float16 storage changes the test NLL by at most 0.05 nats (same images, same noise)
    assert abs(meta["float16_minus_float32_nats"]) <= 0.05
    assert abs(meta["test_nll"] - meta["test_nll_float32"]) <= 0.05
    model = load_model_file(path)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_load_or_train_uses_the_shipped_model_unless_told_to_retrain(monkeypatch):
    cfg = RunConfig(objective="iwae", k=5, layers=[list(s) for s in ONE_LAYER], epochs=1)
    monkeypatch.delenv("IWAE_RETRAIN", raising=False)
    model, info = load_or_train(cfg, device="cpu")
    assert info["source"].startswith("the model shipped with the package")
    assert json.loads(json.dumps(info["config"]))["k"] == 5
    monkeypatch.setenv("IWAE_RETRAIN", "1")
    tiny = RunConfig(dataset="camel", objective="vae", k=1, layers=[[5, 5, 1]], epochs=1,
                     n_train=100)
    _, info = load_or_train(tiny, device="cpu", progress=False)
    assert info["source"] == "trained in this notebook"


def test_the_shipped_model_script_writes_the_one_record(tmp_path):
    """scripts/train_shipped_models.py writes each model's metadata as the one result record
    (results.model_record), which the loaders read back (runs.find_trained, describe_source)."""
    import importlib.util
    from pathlib import Path

    from iwae_tutorial import runs
    from iwae_tutorial.results import SCHEMA
    from iwae_tutorial.runs import RunConfig

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "train_shipped_models", root / "scripts" / "train_shipped_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = RunConfig(dataset="camel", objective="iwae", k=5, layers=[[5, 5, 1]], epochs=1,
                    n_train=200, seed=0)
    runs.train_run(cfg, run_dir=tmp_path / "run", device="cpu", progress=False)
    meta = script.export("camel-iwae-k5-s0", tmp_path / "run", tmp_path / "out", eval_n=50,
                         eval_k=10, command=["test"], t_train=0.0)
    assert meta["schema"] == SCHEMA and meta["name"] == "camel-iwae-k5-s0"
    assert meta["nll"] is not None and "test_nll" not in meta and meta["epochs"] == 1
    path, found = runs.find_trained("camel", "iwae", 5, [[5, 5, 1]], tmp_path / "out",
                                    shipped=False)
    assert path.name == "camel-iwae-k5-s0.pt" and found["nll"] == meta["nll"]
    assert "test NLL" in runs.describe_source({"source": "x", **found})
