"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests train small models: one thread is faster, and immune to a busy machine (two
    OpenMP threads spin-waiting on an oversubscribed CPU can be 10-100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
