"""Tests of iwae_tutorial.data: lookup, checksums, atomic downloads, loaders and the camel.

Tests that need the real data find it through ``IWAE_DATA_DIR`` (CI: ../shared/data) or the
user cache and are skipped, with the reason, when it is absent. Nothing here uses the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import stat
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import idx_bytes

from iwae_tutorial import data
from iwae_tutorial.data import files as data_files
from iwae_tutorial.data import mnist as data_mnist
from iwae_tutorial.data import omniglot as data_omniglot

MNIST_STEMS = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
LAKE28_FILES = [
    "images_background.png",
    "images_background.json",
    "images_evaluation.png",
    "images_evaluation.json",
]


# ------------------------------------------------------------------------------------------
# helpers and fixtures
# ------------------------------------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> str:
    """Write ``arr`` as an IDX file (gzipped if ``compress``); return the md5 of the raw IDX."""
    raw = idx_bytes(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return hashlib.md5(raw).hexdigest()


def real_root(dataset: str, required: list[str]) -> Path:
    """The data directory holding the real ``dataset`` ($IWAE_DATA_DIR or cache), else skip."""
    d = data.find_data_dir(dataset, required)
    if d is None:
        pytest.skip(
            f"real {dataset}/ data not found: set {data.ENV_VAR} to a folder containing "
            f"{dataset}/{required[0]} (CI uses ../shared/data)"
        )
    return d.parent


def make_fake_mnist(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 410,
                    n_test: int = 7) -> dict[str, np.ndarray]:
    """Small MNIST-like IDX files under root/mnist, with the loader's md5s patched to match."""
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    specs = dict(data.MNIST_FILES)
    for i, (key, arr) in enumerate(arrays.items()):
        spec = specs[key]
        # mix gzipped and raw files: both must be accepted
        name = spec.name if i % 2 == 0 else spec.name.removesuffix(".gz")
        md5 = write_idx(root / "mnist" / name, arr, compress=name.endswith(".gz"))
        specs[key] = dataclasses.replace(spec, digest=md5)
    monkeypatch.setattr(data_mnist, "MNIST_FILES", specs)
    return arrays


class FakeResponse(io.BytesIO):
    """What ``_urlopen`` returns: a readable context manager."""


# ------------------------------------------------------------------------------------------
# lookup
# ------------------------------------------------------------------------------------------


def test_search_order_root_env_cache(isolated: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir = tmp_path / "env"
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    root = tmp_path / "root"
    assert data.data_search_dirs(root) == [root, env_dir, isolated]
    assert data.data_search_dirs() == [env_dir, isolated]

    for base in (isolated, env_dir, root):
        (base / "mnist").mkdir(parents=True)
        (base / "mnist" / "train-labels-idx1-ubyte").write_bytes(b"x")
    req = ["train-labels-idx1-ubyte.gz"]  # the raw (uncompressed) name is accepted too
    assert data.find_data_dir("mnist", req, root=root) == root / "mnist"
    assert data.find_data_dir("mnist", req) == env_dir / "mnist"
    monkeypatch.delenv(data.ENV_VAR)
    assert data.find_data_dir("mnist", req) == isolated / "mnist"
    assert data.find_data_dir("mnist", ["missing.bin"], root=root) is None


# ------------------------------------------------------------------------------------------
# read_idx
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    arr = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    md5 = write_idx(path, arr, compress=compress)
    out = data.read_idx(path, expected_md5=md5)
    assert out.dtype == np.uint8 and out.shape == (3, 5, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_int32_big_endian(tmp_path: Path) -> None:
    arr = np.array([1, -2, 70000], dtype=">i4")
    raw = bytes([0, 0, 0x0C, 1]) + np.asarray([3], dtype=">u4").tobytes() + arr.tobytes()
    (tmp_path / "b.idx").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "b.idx"), [1, -2, 70000])


def test_read_idx_checksum_mismatch_names_file(tmp_path: Path) -> None:
    path = tmp_path / "c.idx.gz"
    write_idx(path, np.zeros((2, 3), np.uint8))
    with pytest.raises(data.DataError, match="Checksum mismatch") as exc:
        data.read_idx(path, expected_md5="0" * 32)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_truncated(tmp_path: Path, compress: bool) -> None:
    raw = idx_bytes(np.ones((10, 28, 28), np.uint8))
    path = tmp_path / "t.idx"
    if compress:
        path.write_bytes(gzip.compress(raw)[:-40])  # truncated gzip stream
    else:
        path.write_bytes(raw[:-100])  # truncated payload
    with pytest.raises(data.DataError, match="truncated") as exc:
        data.read_idx(path)
    assert str(path) in str(exc.value)


def test_read_idx_bad_magic_and_trailing_bytes(tmp_path: Path) -> None:
    (tmp_path / "m.idx").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(data.DataError, match="magic"):
        data.read_idx(tmp_path / "m.idx")
    (tmp_path / "x.idx").write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"junk")
    with pytest.raises(data.DataError, match="trailing"):
        data.read_idx(tmp_path / "x.idx")
    (tmp_path / "h.idx").write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(data.DataError, match="header"):
        data.read_idx(tmp_path / "h.idx")


# ------------------------------------------------------------------------------------------
# MNIST loader on synthetic files
# ------------------------------------------------------------------------------------------


def test_load_mnist_synthetic(isolated: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_fake_mnist(tmp_path / "root", monkeypatch)
    m = data.load_mnist(root=tmp_path / "root", download=False)
    assert m.name == "mnist"
    assert m.x_train.shape == (10, 784) and m.x_valid.shape == (400, 784)
    assert m.x_test.shape == (7, 784)
    assert m.x_train.dtype == torch.float32 and m.y_train.dtype == torch.int64
    flat = arrays["train_images"].reshape(-1, 784).astype(np.float32) / 255
    # train = first n - 400, valid = the LAST 400
    np.testing.assert_array_equal(m.x_train.numpy(), flat[:10])
    np.testing.assert_array_equal(m.x_valid.numpy(), flat[10:])
    np.testing.assert_array_equal(m.y_valid.numpy(), arrays["train_labels"][10:])
    np.testing.assert_array_equal(m.y_test.numpy(), arrays["test_labels"])
    assert 0.0 <= float(m.x_test.min()) and float(m.x_test.max()) <= 1.0
    # repeated loads (cached) give equal, independent tensors
    m2 = data.load_mnist(root=tmp_path / "root", download=False)
    m2.x_train.zero_()
    np.testing.assert_array_equal(m.x_train.numpy(), flat[:10])
    assert torch.equal(data.load_mnist(root=tmp_path / "root", download=False).x_valid, m.x_valid)


def test_load_mnist_corrupted_file_raises_checksum_error(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    arrays = make_fake_mnist(root, monkeypatch)
    bad = arrays["test_images"].copy()
    bad[0, 0, 0] ^= 0xFF  # same size, one byte changed
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    write_idx(path, bad)
    with pytest.raises(data.DataError, match="Checksum mismatch") as exc:
        data.load_mnist(root=root, download=False)
    msg = str(exc.value)
    assert str(path) in msg and "Directories searched" in msg and data.ENV_VAR in msg


def test_load_mnist_missing_names_searched_dirs(isolated: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(data.DataError) as exc:
        data.load_mnist(root=root, download=False)
    msg = str(exc.value)
    assert "mnist/train-images-idx3-ubyte.gz" in msg
    assert str(root / "mnist") in msg and str(isolated / "mnist") in msg  # dirs searched
    assert data.ENV_VAR in msg and "root=" in msg and "download" in msg  # how to fix
    assert not (root / "mnist").exists() and not isolated.exists()  # nothing created


def test_load_mnist_no_network_one_clear_error(isolated: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    urls: list[str] = []

    def offline(url: str, timeout: float):
        urls.append(url)
        assert timeout > 0
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data_files, "_urlopen", offline)
    root = tmp_path / "root"
    with pytest.raises(data.DataError, match="Could not download") as exc:
        data.load_mnist(root=root, download=True)
    msg = str(exc.value)
    assert "mnist/train-images-idx3-ubyte.gz" in msg and str(root / "mnist") in msg
    assert urls == [
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz",
    ]
    assert not root.exists()  # the directory created for the download was removed again


# ------------------------------------------------------------------------------------------
# atomic downloads
# ------------------------------------------------------------------------------------------


def test_download_wrong_checksum_leaves_nothing(isolated: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    good = idx_bytes(np.arange(50, dtype=np.uint8))
    spec = dataclasses.replace(data.MNIST_FILES["train_labels"],
                               digest=hashlib.md5(good).hexdigest())
    served: list[str] = []

    def serve_bad(url: str, timeout: float) -> FakeResponse:
        served.append(url)
        return FakeResponse(gzip.compress(idx_bytes(np.arange(49, dtype=np.uint8))))

    monkeypatch.setattr(data_files, "_urlopen", serve_bad)
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    with pytest.raises(data.DataError, match="checksum mismatch") as exc:
        data._ensure_file(spec, root=root, download=True)
    assert "train-labels-idx1-ubyte.gz" in str(exc.value)
    assert len(served) == 2  # both mirrors tried
    assert list((root / "mnist").iterdir()) == []  # no final file, no temp file
    assert not isolated.exists()


def test_download_right_checksum_appears_atomically(isolated: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.arange(50, dtype=np.uint8) % 10
    good = idx_bytes(labels)
    spec = dataclasses.replace(data.MNIST_FILES["train_labels"],
                               digest=hashlib.md5(good).hexdigest())
    calls: list[str] = []

    def serve(url: str, timeout: float) -> FakeResponse:
        calls.append(url)
        if len(calls) == 1:
            raise urllib.error.URLError("first mirror down")
        return FakeResponse(gzip.compress(good))

    monkeypatch.setattr(data_files, "_urlopen", serve)
    root = tmp_path / "root"  # does not exist yet: created for the download
    path = data._ensure_file(spec, root=root, download=True)
    assert path == root / "mnist" / "train-labels-idx1-ubyte.gz"
    assert sorted(p.name for p in (root / "mnist").iterdir()) == [path.name]
    np.testing.assert_array_equal(data.read_idx(path, spec.digest), labels)
    # found on disk now: no second download
    assert data._ensure_file(spec, root=root, download=True) == path
    assert len(calls) == 2


def test_download_goes_to_first_writable_dir(isolated: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    good = idx_bytes(np.zeros(5, np.uint8))
    spec = dataclasses.replace(data.MNIST_FILES["test_labels"],
                               digest=hashlib.md5(good).hexdigest())
    monkeypatch.setattr(data_files, "_urlopen", lambda url, timeout: FakeResponse(good))
    read_only = tmp_path / "readonly"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        monkeypatch.setenv(data.ENV_VAR, str(read_only))
        path = data._ensure_file(spec, root=None, download=True)
        assert path == isolated / "mnist" / spec.name
        assert list(read_only.iterdir()) == []
    finally:
        read_only.chmod(stat.S_IRWXU)


# ------------------------------------------------------------------------------------------
# real data (skipped when absent)
# ------------------------------------------------------------------------------------------


def test_mnist_real_split_sizes() -> None:
    root = real_root("mnist", [s + ".gz" for s in MNIST_STEMS])
    from iwae_tutorial.data import mnist as mnist_module

    m = data.load_mnist(root=root, download=False)
    assert m.x_train.shape == (59600, 784) and m.y_train.shape == (59600,)
    assert m.x_valid.shape == (400, 784) and m.y_valid.shape == (400,)
    assert m.x_test.shape == (10000, 784) and m.y_test.shape == (10000,)
    assert m.x_train.dtype == torch.float32 and m.y_test.dtype == torch.int64
    assert float(m.x_train.min()) == 0.0 and float(m.x_train.max()) == 1.0
    assert set(m.y_test.unique().tolist()) == set(range(10))
    assert abs(float(m.x_test.mean()) - 0.132515) < 1e-4  # published MNIST statistic: test mean/255
    hits = mnist_module._read_idx_cached.cache_info().hits
    data.load_mnist(root=root, download=False)
    # verification is cached: the second load reads and checks no file again (a cache hit per
    # file instead of a timing, which a busy machine makes meaningless)
    assert mnist_module._read_idx_cached.cache_info().hits >= hits + 4


def test_binarized_mnist_real() -> None:
    root = real_root("binarized_mnist", ["binarized_mnist.npz"])
    b = data.load_binarized_mnist(root=root)
    assert b.name == "binarized-mnist"
    assert (b.x_train.shape, b.x_valid.shape, b.x_test.shape) == (
        (50000, 784), (10000, 784), (10000, 784))
    assert b.y_train is None and b.y_valid is None and b.y_test is None
    assert set(b.x_test.unique().tolist()) == {0.0, 1.0}
    assert int(b.x_test.sum()) == 1038896  # the published statistics of the file


def test_lake28_real_sizes_and_variant() -> None:
    root = real_root("omniglot28", LAKE28_FILES)
    o = data.load_omniglot(root=root, variant="lake28", download=False)
    assert o.variant == "lake28" and o.name == "omniglot-lake28"
    assert o.x_train.shape == (24345, 784) and o.x_test.shape == (8115, 784)
    assert o.x_train.dtype == torch.float32
    assert 0.0 <= float(o.x_train.min()) and float(o.x_train.max()) <= 1.0
    assert len(o.alphabets) == 50 and o.y_train is not None and o.y_test is not None
    assert o.y_train.shape == (24345,) and int(o.y_test.max()) == 49
    # ink is bright and sparse, background dark (like MNIST)
    assert 0.02 < float(o.x_test.mean()) < 0.3
    # deterministic split
    o2 = data.load_omniglot(root=root, variant="lake28", download=False)
    assert torch.equal(o.x_test, o2.x_test)


# ------------------------------------------------------------------------------------------
# Omniglot on synthetic files, and the missing "burda" file
# ------------------------------------------------------------------------------------------


def test_lake28_synthetic_split(isolated: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    root = tmp_path / "root"
    d = root / "omniglot28"
    d.mkdir(parents=True)
    # 2 sheets; 3 characters x 20 drawings in all; tile value encodes its global index
    labels_bg = [["0001", "Alpha"]] * 20 + [["0002", "Beta"]] * 20
    labels_ev = [["0003", "Alpha"]] * 20
    specs = dict(data.OMNIGLOT28_FILES)
    counter = 0
    for sheet, labels in (("background", labels_bg), ("evaluation", labels_ev)):
        n_rows = math.ceil(len(labels) / 20)
        img = np.zeros((n_rows * 28, 560, 4), np.uint8)
        img[..., 3] = 255
        for t in range(len(labels)):
            r, c = divmod(t, 20)
            img[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28, :3] = counter
            counter += 1
        Image.fromarray(img, "RGBA").save(d / f"images_{sheet}.png")
        (d / f"images_{sheet}.json").write_text(json.dumps(labels))
        for kind in ("png", "json"):
            p = d / f"images_{sheet}.{kind}"
            specs[f"{sheet}_{kind}"] = dataclasses.replace(
                specs[f"{sheet}_{kind}"], digest=hashlib.sha256(p.read_bytes()).hexdigest())
    monkeypatch.setattr(data_omniglot, "OMNIGLOT28_FILES", specs)

    o = data.load_omniglot(root=root, variant="lake28", download=False)
    assert o.name == "omniglot-lake28"
    assert o.x_train.shape == (45, 784) and o.x_test.shape == (15, 784)
    ids_tr = (o.x_train[:, 0] * 255).round().long()
    ids_te = (o.x_test[:, 0] * 255).round().long()
    assert torch.all(o.x_train == o.x_train[:, :1])  # each tile is constant = its index
    assert set(ids_tr.tolist()).isdisjoint(ids_te.tolist())
    assert sorted(ids_tr.tolist() + ids_te.tolist()) == list(range(60))
    for char in range(3):  # 15 / 5 per character
        assert int(((ids_te >= 20 * char) & (ids_te < 20 * (char + 1))).sum()) == 5
    assert o.alphabets == ("Alpha", "Beta")
    # characters sorted by (alphabet, id): 0001, 0003 (Alpha), then 0002 (Beta)
    assert sorted(o.y_test.tolist()) == [0] * 10 + [1] * 5  # shuffled, 5 per character

    # a corrupted sheet raises the checksum error naming the file
    (d / "images_evaluation.json").write_text(json.dumps(labels_ev[:-1] + [["0003", "Beta"]]))
    with pytest.raises(data.DataError, match="Checksum mismatch") as exc:
        data.load_omniglot(root=root, variant="lake28", download=False)
    assert "images_evaluation.json" in str(exc.value)


def test_burda_missing_raises_clear_error(isolated: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(data.DataError) as exc:
        data.load_omniglot(root=root, variant="burda", download=False)
    msg = str(exc.value)
    assert "omniglot/chardata.mat" in msg and str(root / "omniglot") in msg
    assert 'variant="lake28"' in msg

    def offline(url: str, timeout: float):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(data_files, "_urlopen", offline)
    with pytest.raises(data.DataError, match="Could not download") as exc:
        data.load_omniglot(root=root, variant="burda", download=True)
    assert 'variant="lake28"' in str(exc.value) and "chardata.mat" in str(exc.value)
    assert list(root.iterdir()) == []
    with pytest.raises(ValueError, match="variant"):
        data.load_omniglot(root=root, variant="other", download=False)  # type: ignore[arg-type]


def test_burda_missing_on_this_machine() -> None:
    """Where the real data dir is configured, chardata.mat is absent (no copy of it there)."""
    root = real_root("omniglot28", LAKE28_FILES)
    if (root / "omniglot" / "chardata.mat").exists():
        pytest.skip("chardata.mat is present here")
    if data.find_data_dir("omniglot", ["chardata.mat"]) is not None:
        pytest.skip("chardata.mat is present in another data directory")
    with pytest.raises(data.DataError, match='variant="lake28"'):
        data.load_omniglot(root=root, variant="burda", download=False)


# ------------------------------------------------------------------------------------------
# dynamic binarization
# ------------------------------------------------------------------------------------------


def test_dynamic_binarize() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(500, 784, generator=g)
    b1 = data.dynamic_binarize(x, generator=g)
    b2 = data.dynamic_binarize(x, generator=g)
    assert b1.shape == x.shape and b1.dtype == x.dtype and b1.device == x.device
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(b1, b2)  # a fresh draw per call
    assert abs(float(b1.mean()) - float(x.mean())) < 0.01
    # reproducible with a seeded generator
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(data.dynamic_binarize(x, g1), data.dynamic_binarize(x, g2))
    # dtype preserved
    assert data.dynamic_binarize(x.double()).dtype == torch.float64


# ------------------------------------------------------------------------------------------
# camel
# ------------------------------------------------------------------------------------------


def test_camel_log_prob_integrates_to_one() -> None:
    grid = torch.linspace(-8.0, 8.0, 20001, dtype=torch.float64)
    p = data.camel_log_prob(grid).exp()
    assert abs(float(torch.trapezoid(p, grid)) - 1.0) < 1e-8
    # exact value at 0: two N(+-1, 0.25) densities at distance 1
    expected = math.exp(-2.0) / (0.5 * math.sqrt(2 * math.pi))
    assert math.isclose(float(data.camel_log_prob(torch.zeros(1, 1, dtype=torch.float64))),
                        math.log(expected), rel_tol=1e-12)
    # [n, 1] -> [n]; stable far in the tails (log space)
    lp = data.camel_log_prob(torch.tensor([[0.0], [60.0]]))
    assert lp.shape == (2,) and torch.isfinite(lp).all()


def test_camel_expected_log_prob_and_entropy() -> None:
    v = data.camel_expected_log_prob()
    assert abs(v - (-1.358)) < 1e-3
    assert data.camel_entropy() == pytest.approx(-v)
    assert data.camel_entropy() > 0
    x = data.camel_sample(200_000, generator=torch.Generator().manual_seed(0))
    mc = float(data.camel_log_prob(x.double()).mean())
    assert abs(mc - v) < 0.01


def test_camel_samples_and_data() -> None:
    x = data.camel_sample(100_000, generator=torch.Generator().manual_seed(1))
    assert x.shape == (100_000, 1) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.02
    assert abs(float(x.std()) - math.sqrt(1.25)) < 0.02
    assert abs(float((x > 0).float().mean()) - 0.5) < 0.01
    xtr, xte = data.camel_data(1000, 300, seed=5)
    assert xtr.shape == (1000, 1) and xte.shape == (300, 1)
    xtr2, xte2 = data.camel_data(1000, 300, seed=5)
    assert torch.equal(xtr, xtr2) and torch.equal(xte, xte2)
    assert not torch.equal(data.camel_data(1000, 300, seed=6)[0], xtr)



def test_burda_synthetic_chardata(isolated: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    upright = rng.random((5, 28, 28))
    upright[:, :, :3] = 0.0  # asymmetric: the first three columns are blank
    cols = np.stack([im.flatten(order="F") for im in upright], axis=1)  # 784 x 5, as in the .mat
    target = np.eye(50)[:, [3, 0, 49, 1, 2]]
    path = tmp_path / "root" / "omniglot" / "chardata.mat"
    path.parent.mkdir(parents=True)
    savemat(path, {"data": cols[:, :3], "testdata": cols[:, 3:], "target": target[:, :3],
                   "testtarget": target[:, 3:]})
    spec = dataclasses.replace(data.CHARDATA_FILE,
                               digest=hashlib.md5(path.read_bytes()).hexdigest())
    monkeypatch.setattr(data_omniglot, "CHARDATA_FILE", spec)
    o = data.load_omniglot(root=tmp_path / "root", variant="burda", download=False)
    assert o.variant == "burda" and o.name == "omniglot-burda"
    assert o.x_train.shape == (3, 784) and o.x_test.shape == (2, 784)
    assert o.x_train.dtype == torch.float32
    np.testing.assert_allclose(o.x_train.numpy(), upright[:3].reshape(3, 784), rtol=1e-6)
    assert o.y_train.tolist() == [3, 0, 49] and o.y_test.tolist() == [1, 2]
