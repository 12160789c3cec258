"""Helpers shared by several test modules (fixtures shared by many live in conftest.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

from iwae_tutorial import reproduce as rp
from iwae_tutorial.data import Dataset
from iwae_tutorial.models import IWAE
from iwae_tutorial.toy import LinearGaussian


def grey(n: int, dim: int = 784, seed: int = 0, dtype: torch.dtype = torch.float32
         ) -> torch.Tensor:
    """[n, dim] uniform grey values in [0, 1), seeded."""
    return torch.rand(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def seeded_model(layers, seed: int = 0, dim: int = 784, dtype: torch.dtype = torch.float32
                 ) -> IWAE:
    """An IWAE initialised under ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return IWAE(dim, layers).to(dtype)


def tiny_dataset(name: str = "mnist") -> Dataset:
    """40 training and 10 test images of noise: enough for reproduce's plumbing."""
    g = torch.Generator().manual_seed(0)
    return Dataset(name, torch.rand(40, 784, generator=g), torch.rand(10, 784, generator=g),
                   True, "bernoulli")


#: a reproduce budget for tiny_dataset: 40 images, 1 epoch, L_5 on 6 test images
TINY = rp.Budget("smoke", 40, 1, 5, 6, "tiny budget for the tests")


def idx_bytes(arr: np.ndarray) -> bytes:
    """Uncompressed IDX encoding of a uint8 array."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.tobytes()


# ------------------------------------------------------- the exact linear-Gaussian model
LG = LinearGaussian(a=1.5, b=0.3, s=0.7)
X = torch.tensor([[-1.0], [0.2], [1.7]], dtype=torch.float64)


def linear_gaussian(q_mean_w: float, q_mean_b: float, q_log_std: float) -> IWAE:
    return LG.model(q_mean_w, q_mean_b, q_log_std)


def exact_posterior_model() -> IWAE:
    return LG.exact_model()


def log_px(x: torch.Tensor) -> torch.Tensor:
    # written out here, independently of the package: p(x) = N(b, a^2 + s^2)
    var = LG.a**2 + LG.s**2
    return (-0.5 * (x - LG.b) ** 2 / var - 0.5 * math.log(2 * math.pi * var)).squeeze(-1)


def one_line_error(capsys, code: int, *fragments: str) -> str:
    """Exit status 2 and one error line (the last line of stderr, after any progress lines)
    holding ``fragments``."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == lines[0], err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


#: a small, fast camel run on the command line (the fault tests train and break it)
CAMEL = ["--dataset", "camel", "--layers", "8,1", "--n-train", "200", "--k", "2",
         "--eval-k", "10", "--eval-n", "20", "--no-progress"]


def smoke_chapter_env(monkeypatch) -> None:
    """Skip without MNIST; else the smoke profile, outside a book build (for kernels that run
    a chapter)."""
    import pytest

    from iwae_tutorial.data import DataError, load_mnist

    try:
        load_mnist(download=False)
    except DataError as e:
        pytest.skip(f"MNIST is not available here (set IWAE_DATA_DIR): {str(e)[:100]}")
    monkeypatch.setenv("IWAE_PROFILE", "smoke")
    monkeypatch.delenv("IWAE_BOOK_BUILD", raising=False)
