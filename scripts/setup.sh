#!/usr/bin/env bash
# Create the virtual environment .venv and install the project into it (editable).
#
#   bash scripts/setup.sh
#
# Idempotent and quick when nothing changed: the install is skipped while the stamp file
# .venv/.installed-<hash of requirements.txt + pyproject.toml> exists.
# Environment: PYTHON (interpreter for a new venv, default python3), IWAE_VENV (venv path,
# default <repo>/.venv), TORCH_SPEC (default torch==2.13.0; installed first, only when torch
# is not importable in the venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${IWAE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if command -v sha256sum >/dev/null 2>&1; then
  HASH="$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
else  # macOS
  HASH="$(cat requirements.txt pyproject.toml | shasum -a 256 | cut -c1-16)"
fi
STAMP="$VENV/.installed-$HASH"

have_modules() {  # cheap check (no import of torch): are the modules findable?
  "$VPY" - "$@" <<'PY'
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)
PY
}

if [ -f "$STAMP" ] && have_modules torch iwae_tutorial; then
  echo "setup: $VENV is up to date ($(basename "$STAMP"))"
  exit 0
fi

"$VPY" -m pip install --upgrade --quiet pip
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  # First, on its own: on a CPU-only machine whose pip is configured for CPU wheels this is the
  # CPU build; elsewhere it is the normal PyPI wheel.
  echo "setup: installing $TORCH_SPEC"
  "$VPY" -m pip install "$TORCH_SPEC"
fi
echo "setup: installing requirements.txt and the package (editable)"
"$VPY" -m pip install --quiet -r requirements.txt
"$VPY" -m pip install --quiet -e .
"$VPY" -c "import torch, iwae_tutorial; print('setup: torch', torch.__version__, '| iwae_tutorial', iwae_tutorial.__version__)"
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "setup: done"
