"""Where a result came from: code version, software, hardware, time and command.

Every result file written by the CLI and the reproduction scripts carries the dict returned by
:func:`provenance`, so a number in the book can be traced to the commit and the machine that
produced it. The host name is deliberately left out.

:func:`iwae_tutorial.checkpoints.write_json_atomic` writes such files so that a reader never
sees half a file.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["provenance", "git_info", "device_name"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or "unknown", "dirty": bool or None}`` of the git repository holding
    ``path`` (default: this package's source). ``dirty`` is True when tracked files differ from
    the commit (untracked files are ignored)."""
    cwd = Path(path) if path is not None else _PACKAGE_DIR
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return {"commit": "unknown", "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Any = None) -> str:
    """A readable name of ``device``: the GPU's name on CUDA, else the CPU model."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            return torch.cuda.get_device_name(dev)
        except Exception:  # pragma: no cover - no driver
            return "cuda (name unavailable)"
    if dev.type == "mps":  # pragma: no cover - Apple only
        return f"Apple MPS ({_cpu_model()})"
    return _cpu_model()


def provenance(
    command: list[str] | None = None,
    wall_seconds: float | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Describe the current run.

    Args:
        command: the command line (default ``sys.argv``).
        wall_seconds: wall-clock time of the work being described, if known.
        device: the torch device used (default: the package's default device).

    Returns:
        a JSON-serialisable dict: ``git_commit``, ``git_dirty``, ``package_version``,
        ``torch_version``, ``python_version``, ``platform``, ``device``, ``device_name``,
        ``cpu_count``, ``torch_threads``, ``date_utc`` (ISO 8601), ``wall_seconds`` and
        ``command``. No host name.
    """
    import torch

    from . import __version__

    if device is None:
        from .profiles import default_device

        device = default_device()
    dev = torch.device(device)
    git = git_info()
    info: dict[str, Any] = {
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "package_version": __version__,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "device": str(dev),
        "device_name": device_name(dev),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 3),
        "command": [str(c) for c in (sys.argv if command is None else command)],
    }
    return info
