"""Shared test settings."""

from pathlib import Path

import pytest
import torch

from iwae_tutorial import data
from iwae_tutorial.data import files as data_files


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests train small models: one thread is faster, and immune to a busy machine (two
    OpenMP threads spin-waiting on an oversubscribed CPU can be 10-100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $IWAE_DATA_DIR, a private empty cache dir, and no network: returns the cache dir."""
    cache = tmp_path / "user-cache"
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data_files, "_cache_dir", lambda: cache)

    def no_network(url: str, timeout: float):
        raise AssertionError(f"unexpected network access to {url}")

    monkeypatch.setattr(data_files, "_urlopen", no_network)
    return cache


@pytest.fixture
def camel_run(tmp_path, capsys):
    """A trained 1-epoch camel run directory (train --out DIR)."""
    out = tmp_path / "run"
    from helpers import CAMEL

    from iwae_tutorial import cli

    assert cli.main(["train", *CAMEL, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    return out
