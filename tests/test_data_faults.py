"""Faults of iwae_tutorial.data: corrupt and unreadable files, killed downloads, a bad copy in an
earlier data directory, and the wording of the error messages.

Every fault must end in one :class:`DataError` line naming the file and the fix (or, where a
good copy exists further down the search order, in that copy and one warning). Nothing here
uses the network; the real data (``IWAE_DATA_DIR``) is used only where noted, else skipped.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes

from iwae_tutorial import data
from iwae_tutorial.data import files as data_files
from iwae_tutorial.data import mnist as data_mnist
from iwae_tutorial.data import omniglot as data_omniglot

PACKAGE_DIR = Path(data.__file__).parent
REAL_DATA_DIR = os.environ.get(data.ENV_VAR, "")  # read before any fixture unsets it
NPZ = Path("binarized_mnist") / "binarized_mnist.npz"


# ------------------------------------------------------------------------------------------
# helpers and fixtures
# ------------------------------------------------------------------------------------------


def write_fake_mnist(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small gzipped MNIST-like IDX files under root/mnist; the loader's md5s patched to match."""
    rng = np.random.default_rng(2)
    shapes = {"train_images": (402, 28, 28), "train_labels": (402,),
              "test_images": (3, 28, 28), "test_labels": (3,)}
    specs = dict(data_mnist.MNIST_FILES)
    (root / "mnist").mkdir(parents=True, exist_ok=True)
    for key, shape in shapes.items():
        raw = idx_bytes(rng.integers(0, 10, shape, dtype=np.uint8))
        (root / "mnist" / specs[key].name).write_bytes(gzip.compress(raw))
        specs[key] = dataclasses.replace(specs[key], digest=hashlib.md5(raw).hexdigest())
    monkeypatch.setattr(data_mnist, "MNIST_FILES", specs)


def small_binarized(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Small 0/1 arrays train/valid/test; the loader's expected shapes and sha256s patched."""
    rng = np.random.default_rng(3)
    arrays = {k: rng.integers(0, 2, (n, 784), dtype=np.uint8)
              for k, n in (("train", 6), ("valid", 2), ("test", 3))}
    expected = {k: (a.shape, hashlib.sha256(a.tobytes()).hexdigest()) for k, a in arrays.items()}
    monkeypatch.setattr(data_mnist, "BINARIZED_MNIST_ARRAYS", expected)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = True) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def flip_middle(raw: bytes, n: int = 16) -> bytes:
    b = bytearray(raw)
    m = len(b) // 2
    b[m:m + n] = bytes(x ^ 0xFF for x in b[m:m + n])
    return bytes(b)


def assert_one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def data_warnings(record) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, data.DataWarning)]


def deny_reading(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``Path.read_bytes`` of the files called ``names`` raise PermissionError, as mode 000
    does for a user who is not root (root reads anything, so chmod alone cannot test it)."""
    original = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name in names:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


# ------------------------------------------------------------------------------------------
# 1. a truncated or CRC-corrupt binarized_mnist.npz
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["truncated", "crc", "crc-compressed", "empty", "not-npz"])
def test_binarized_npz_corrupt_is_one_data_error(isolated: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 fault: str) -> None:
    arrays = small_binarized(monkeypatch)
    path = tmp_path / NPZ
    good = write_npz(path, arrays, compressed=(fault != "crc"))
    bad = {
        "truncated": good[: len(good) // 2],
        "crc": flip_middle(good),  # stored (uncompressed) members: a pure CRC-32 error
        "crc-compressed": flip_middle(good),
        "empty": b"",
        "not-npz": b"hello, not a zip file at all\n" * 10,
    }[fault]
    path.write_bytes(bad)
    with pytest.raises(data.DataError) as exc:
        data.load_binarized_mnist(root=tmp_path)
    msg = assert_one_line(exc.value)
    assert str(path) in msg and "Directories searched" in msg
    assert "train" in msg and "valid" in msg and "test" in msg and "0/1" in msg  # what it holds
    assert "--data-dir" in msg and data.ENV_VAR in msg and "SOURCES.md" not in msg
    if fault == "crc":
        assert "CRC" in msg


def test_binarized_npz_missing_array(isolated: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = small_binarized(monkeypatch)
    del arrays["test"]
    write_npz(tmp_path / NPZ, arrays)
    with pytest.raises(data.DataError, match="has no array 'test'") as exc:
        data.load_binarized_mnist(root=tmp_path)
    assert str(tmp_path / NPZ) in assert_one_line(exc.value)


@pytest.mark.parametrize("fault", ["truncated", "crc"])
def test_binarized_npz_real_file_corrupt(isolated: Path, tmp_path: Path, fault: str) -> None:
    """The same with a damaged copy of the real file (the array checksums are the real ones)."""
    real = Path(REAL_DATA_DIR) / NPZ
    if not REAL_DATA_DIR or not real.is_file():
        pytest.skip(f"real {NPZ} not found: set {data.ENV_VAR}")
    raw = real.read_bytes()
    path = tmp_path / NPZ
    path.parent.mkdir(parents=True)
    path.write_bytes(raw[: len(raw) - 1000] if fault == "truncated" else flip_middle(raw))
    with pytest.raises(data.DataError) as exc:
        data.load_binarized_mnist(root=tmp_path)
    assert str(path) in assert_one_line(exc.value)


# ------------------------------------------------------------------------------------------
# 2. an unreadable file
# ------------------------------------------------------------------------------------------


def assert_unreadable_message(msg: str, path: Path) -> None:
    assert str(path) in msg and "ermission denied" in msg
    assert "readable" in msg and "--data-dir" in msg and data.ENV_VAR in msg


def test_unreadable_idx_file(isolated: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    write_fake_mnist(root, monkeypatch)
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    deny_reading(monkeypatch, path.name)
    with pytest.raises(data.DataError) as exc:
        data.read_idx(path)
    assert_unreadable_message(assert_one_line(exc.value), path)
    with pytest.raises(data.DataError) as exc:
        data.load_mnist(root=root, download=False)
    msg = assert_one_line(exc.value)
    assert_unreadable_message(msg, path)
    assert "Directories searched" in msg


@pytest.mark.parametrize("name", ["images_evaluation.png", "images_background.json"])
def test_unreadable_omniglot_file(isolated: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    d = tmp_path / "root" / "omniglot28"
    d.mkdir(parents=True)
    specs = dict(data_omniglot.OMNIGLOT28_FILES)
    for key, spec in specs.items():
        (d / spec.name).write_bytes(key.encode())
        specs[key] = dataclasses.replace(spec, digest=hashlib.sha256(key.encode()).hexdigest())
    monkeypatch.setattr(data_omniglot, "OMNIGLOT28_FILES", specs)
    deny_reading(monkeypatch, name)
    with pytest.raises(data.DataError) as exc:
        data.load_omniglot(root=tmp_path / "root", variant="lake28", download=False)
    assert_unreadable_message(assert_one_line(exc.value), d / name)


def test_unreadable_npz(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_npz(tmp_path / NPZ, small_binarized(monkeypatch))
    deny_reading(monkeypatch, NPZ.name)
    with pytest.raises(data.DataError) as exc:
        data.load_binarized_mnist(root=tmp_path)
    assert_unreadable_message(assert_one_line(exc.value), tmp_path / NPZ)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads files of mode 000; the monkeypatched tests cover it")
def test_unreadable_idx_file_mode_000(isolated: Path, tmp_path: Path) -> None:
    path = tmp_path / "a.idx"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    path.chmod(0)
    try:
        with pytest.raises(data.DataError) as exc:
            data.read_idx(path)
        assert_unreadable_message(assert_one_line(exc.value), path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# ------------------------------------------------------------------------------------------
# 3. the temporary file of a killed download
# ------------------------------------------------------------------------------------------


def test_stale_part_files_removed_before_download(isolated: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    good = idx_bytes(np.arange(7, dtype=np.uint8))
    spec = dataclasses.replace(data.MNIST_FILES["train_labels"],
                               digest=hashlib.md5(good).hexdigest())
    monkeypatch.setattr(data_files, "_urlopen", lambda url, timeout: io.BytesIO(good))
    d = tmp_path / "root" / "mnist"
    d.mkdir(parents=True)
    old = time.time() - 2 * data.STALE_PART_AGE_S
    stale = d / f".{spec.name}.k1ll3d.part"  # a download killed long ago
    live = d / f".{spec.name}.runn1n.part"  # another process downloading right now
    other = d / ".t10k-labels-idx1-ubyte.gz.k1ll3d.part"  # stale, but of another file
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    path = data._ensure_file(spec, root=tmp_path / "root", download=True)
    assert path == d / spec.name and path.read_bytes() == good
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert sorted(p.name for p in d.iterdir()) == sorted([path.name, live.name, other.name])


def test_remove_stale_parts_only_matches_its_own_name(tmp_path: Path) -> None:
    old = time.time() - 2 * data.STALE_PART_AGE_S
    names = [".a.gz.x1.part", ".a.gz.x2.tmp", "a.gz.x3.part", ".a.gzz.x4.part", ".b.a.gz.x5.part"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
        os.utime(tmp_path / n, (old, old))
    removed = data_files._remove_stale_parts(tmp_path, "a.gz")
    assert [p.name for p in removed] == [".a.gz.x1.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


# ------------------------------------------------------------------------------------------
# 4. a bad copy in an earlier data directory is bypassed
# ------------------------------------------------------------------------------------------


def test_corrupt_mnist_in_data_dir_falls_back_to_env(isolated: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, root = tmp_path / "env", tmp_path / "root"
    write_fake_mnist(env_dir, monkeypatch)
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    (root / "mnist").mkdir(parents=True)
    bad = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"garbage"))
    expected = data.load_mnist(root=env_dir, download=False)
    with pytest.warns(data.DataWarning) as record:
        m = data.load_mnist(root=root, download=False)
    ours = data_warnings(record)
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert str(bad) in msg and str(env_dir / "mnist" / bad.name) in msg and "\n" not in msg
    assert ours[0].filename == __file__  # it points at the caller, not into the package
    assert np.array_equal(m.x_test.numpy(), expected.x_test.numpy())
    assert np.array_equal(m.x_train.numpy(), expected.x_train.numpy())


def test_corrupt_npz_in_data_dir_falls_back_to_env(isolated: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = small_binarized(monkeypatch)
    env_dir, root = tmp_path / "env", tmp_path / "root"
    good = write_npz(env_dir / NPZ, arrays)
    (root / NPZ).parent.mkdir(parents=True)
    (root / NPZ).write_bytes(good[:100])
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    with pytest.warns(data.DataWarning, match="Skipped the bad copy") as record:
        b = data.load_binarized_mnist(root=root)
    ours = data_warnings(record)
    assert len(ours) == 1 and str(root / NPZ) in str(ours[0].message)
    assert np.array_equal(b.x_test.numpy(), arrays["test"].astype(np.float32))


def test_every_copy_bad_names_the_first_and_the_others(isolated: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    small_binarized(monkeypatch)
    env_dir, root = tmp_path / "env", tmp_path / "root"
    for base in (root, env_dir):
        (base / NPZ).parent.mkdir(parents=True)
        (base / NPZ).write_bytes(b"PK\x03\x04 not really")
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(data.DataError) as exc:
            data.load_binarized_mnist(root=root)
    assert data_warnings(record) == []  # nothing good was found: an error, not a warning
    msg = assert_one_line(exc.value)
    assert msg.startswith(f"Cannot read {root / NPZ}")
    assert f"bad too: {env_dir / NPZ}" in msg and "Directories searched" in msg


def test_good_copy_first_is_used_without_warning(isolated: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = small_binarized(monkeypatch)
    env_dir, root = tmp_path / "env", tmp_path / "root"
    write_npz(root / NPZ, arrays)
    (env_dir / NPZ).parent.mkdir(parents=True)
    (env_dir / NPZ).write_bytes(b"corrupt, but never read")
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert data.load_binarized_mnist(root=root).x_train.shape == (6, 784)
    assert data_warnings(record) == []


# ------------------------------------------------------------------------------------------
# 5. and 6. messages for both audiences, and no file the user does not have
# ------------------------------------------------------------------------------------------


def test_messages_name_options_and_environment(isolated: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(data.DataError) as exc:
        data.load_mnist(root=root, download=False)
    msg = assert_one_line(exc.value)
    assert "--data-dir DIR" in msg and data.ENV_VAR in msg and "--no-download" in msg
    assert "root=DIR in Python" in msg and "download=True in Python" in msg

    with pytest.raises(data.DataError) as exc:
        data.load_binarized_mnist(root=root)
    msg = assert_one_line(exc.value)
    assert "--data-dir DIR" in msg and "root=DIR in Python" in msg and data.ENV_VAR in msg

    with pytest.raises(data.DataError) as exc:
        data.load_omniglot(root=root, variant="burda", download=False)
    msg = assert_one_line(exc.value)
    assert "--dataset omniglot-lake28" in msg and 'variant="lake28"' in msg

    write_fake_mnist(root, monkeypatch)
    spec = dataclasses.replace(data_mnist.MNIST_FILES["test_labels"], digest="0" * 32)
    monkeypatch.setattr(data_mnist, "MNIST_FILES", {**data_mnist.MNIST_FILES,
                                                    "test_labels": spec})
    with pytest.raises(data.DataError, match="Checksum mismatch") as exc:
        data.load_mnist(root=root, download=False)
    msg = assert_one_line(exc.value)
    assert "--data-dir DIR" in msg and "root=DIR in Python" in msg


def _message_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string literal or f-string that is not a docstring."""
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    out: list[tuple[int, str]] = []
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            inner.update(id(v) for v in node.values)
            out.append((node.lineno, "".join(str(p) for p in parts)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings and id(node) not in inner):
            out.append((node.lineno, node.value))
    return out


def test_message_texts_phrase_python_arguments_for_both_audiences() -> None:
    """Wherever a message names ``root=`` or ``download=``, it says "in Python" next to the
    command-line spelling; and no message points at SOURCES.md (users do not have it)."""
    bad: list[str] = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        src = path.read_text(encoding="utf-8")
        for line, text in _message_strings(ast.parse(src)):
            if ("root=" in text or "download=" in text) and "in Python" not in text:
                bad.append(f"{path.name}:{line}: {text!r}")
            if "SOURCES.md" in text:
                bad.append(f"{path.name}:{line}: mentions SOURCES.md")
    assert not bad, bad
    assert all("SOURCES.md" not in p.read_text() for p in PACKAGE_DIR.glob("*.py"))


def test_data_error_is_one_line() -> None:
    assert str(data.DataError("a\nb\r\nc")) == "a b c"


# ------------------------------------------------------------------------------------------
# 7. downloads: fsync'ed before the rename, readable by others
# ------------------------------------------------------------------------------------------


def test_download_fsyncs_before_rename(isolated: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    good = idx_bytes(np.arange(9, dtype=np.uint8))
    spec = dataclasses.replace(data.MNIST_FILES["test_labels"],
                               digest=hashlib.md5(good).hexdigest())
    monkeypatch.setattr(data_files, "_urlopen", lambda url, timeout: io.BytesIO(good))
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")
                       if os.path.exists(f"/proc/self/fd/{fd}") else str(fd)))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(data_files.os, "fsync", fsync)
    monkeypatch.setattr(data_files.os, "replace", replace)
    path = data._ensure_file(spec, root=tmp_path / "root", download=True)
    kinds = [k for k, _ in events]
    assert "replace" in kinds
    i = kinds.index("replace")
    tmp = events[i][1]
    assert Path(tmp).name.startswith(f".{spec.name}.") and tmp.endswith(".part")
    assert "fsync" in kinds[:i]  # the file's bytes are on disk before it gets its name
    if os.path.exists("/proc/self/fd"):
        assert ("fsync", tmp) in events[:i]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert path.read_bytes() == good


# ------------------------------------------------------------------------------------------
# the cache directory without platformdirs
# ------------------------------------------------------------------------------------------


def test_cache_dir_without_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # import platformdirs -> ImportError
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_files._cache_dir() == tmp_path / "xdg" / "iwae-tutorial"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_files._cache_dir() == tmp_path / "home" / ".cache" / "iwae-tutorial"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_files._cache_dir() == tmp_path / "home" / ".cache" / "iwae-tutorial"


def test_package_works_without_platformdirs(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['platformdirs'] = None\n"
        "from iwae_tutorial import data\n"
        "d = data.data_search_dirs()\n"
        "assert d[-1].name == 'iwae-tutorial', d\n"
        "print(d[-1])\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop(data.ENV_VAR, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "xdg" / "iwae-tutorial")
