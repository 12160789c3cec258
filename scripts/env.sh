# Sourced by build_book.sh and test.sh (not run on its own): cd to the repository, set up the
# virtual environment (scripts/setup.sh), put it first on PATH, and default IWAE_DATA_DIR to
# ../shared/data (relative to the repository) when that folder exists and the variable is unset.
# Sets ROOT, VENV and PY.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
VENV="${IWAE_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"
if [ -z "${IWAE_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  IWAE_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
  export IWAE_DATA_DIR
fi
