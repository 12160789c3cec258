"""Data sets for the IWAE tutorial: MNIST, fixed-binarization MNIST, Omniglot and the 1-D camel.

Nothing is read or downloaded at import time.

Where the data lives
--------------------
Every data set lives in its own subfolder of a *data directory*::

    <data dir>/mnist/train-images-idx3-ubyte[.gz]     (and the three other IDX files)
    <data dir>/binarized_mnist/binarized_mnist.npz
    <data dir>/omniglot28/images_{background,evaluation}.{png,json}
    <data dir>/omniglot/chardata.mat

Data directories are searched in this order (:func:`data_search_dirs`):

1. the ``root`` argument of the loader (``--data-dir`` on the command line), if given;
2. the environment variable ``IWAE_DATA_DIR``, if set;
3. the user cache directory, ``platformdirs.user_cache_dir("iwae-tutorial")`` (without
   platformdirs: ``$XDG_CACHE_HOME/iwae-tutorial`` or ``~/.cache/iwae-tutorial``).

Each file is taken from the first directory whose copy is good (checksum and format); a bad
copy in an earlier directory is skipped with a :class:`DataWarning` naming it. A file that is
found nowhere is downloaded (when ``download=True``, i.e. without ``--no-download``, and a
public source exists) into the first *writable* directory of that list: its checksum is
verified in memory, and only then is it written by the project's one atomic writer (a
temporary file next to its final name, fsync, :func:`os.replace`). A failed or corrupt download
never leaves a file behind; the temporary file of a killed write is removed by a later
download of that file.

Every problem (missing, unreadable, truncated or corrupt file, failed download, checksum
mismatch) raises a single :class:`DataError` whose one-line message names the file, the
directories searched and how to fix it.

Modules: :mod:`.files` (lookup, download, checksums), :mod:`.mnist`, :mod:`.omniglot`,
:mod:`.camel` (files to tensors), and :mod:`.datasets`: the one :class:`Dataset` type the
models train and are scored on (train / valid / test), loaded by name with
:func:`load_dataset`. Everything public is importable from here.
"""

from __future__ import annotations

# Names marked "noqa: F401" are re-exported for code written against the single module
# this package replaced (constants, the file specs; ``ensure_file``/``FileSpec``, also as
# ``_ensure_file``/``_FileSpec``, the names the tests were written with).
# The seams tests monkeypatch (``_cache_dir``, ``_urlopen``) live in ``.files`` only: patch
# them there.
from .camel import (
    CAMEL_MEANS,
    CAMEL_STD,
    camel_data,
    camel_entropy,
    camel_expected_log_prob,
    camel_log_prob,
    camel_sample,
)
from .datasets import DATASETS, Dataset, load_dataset
from .files import (
    APP_NAME,  # noqa: F401
    DOWNLOAD_TIMEOUT_S,  # noqa: F401
    ENV_VAR,  # noqa: F401
    STALE_PART_AGE_S,  # noqa: F401
    DataError,
    DataWarning,
    FileSpec,  # noqa: F401
    data_search_dirs,
    ensure_file,  # noqa: F401
    find_data_dir,
)
from .mnist import (
    BINARIZED_MNIST_ARRAYS,  # noqa: F401
    BINARIZED_MNIST_FILE,  # noqa: F401
    MNIST,
    MNIST_FILES,  # noqa: F401
    MNIST_N_VALID,
    dynamic_binarize,
    load_binarized_mnist,
    load_mnist,
    read_idx,
)
from .omniglot import (
    CHARDATA_FILE,  # noqa: F401
    OMNIGLOT28_COLUMNS,  # noqa: F401
    OMNIGLOT28_FILES,  # noqa: F401
    OMNIGLOT28_SEED,  # noqa: F401
    OMNIGLOT28_TEST_PER_CHAR,  # noqa: F401
    OMNIGLOT28_TILE,  # noqa: F401
    Omniglot,
    OmniglotVariant,  # noqa: F401
    load_omniglot,
)

_ensure_file, _FileSpec = ensure_file, FileSpec

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "DataError",
    "DataWarning",
    "data_search_dirs",
    "find_data_dir",
    "read_idx",
    "MNIST",
    "load_mnist",
    "load_binarized_mnist",
    "dynamic_binarize",
    "Omniglot",
    "load_omniglot",
    "camel_sample",
    "camel_log_prob",
    "camel_expected_log_prob",
    "camel_entropy",
    "camel_data",
    "MNIST_N_VALID",
    "CAMEL_MEANS",
    "CAMEL_STD",
]
