#!/usr/bin/env bash
# Build the Jupyter Book into _build/html (warnings are errors; every problem is reported).
#
#   bash scripts/build_book.sh [extra jupyter-book build arguments]
#
# Runs scripts/setup.sh first. IWAE_DATA_DIR defaults to ../shared/data (relative to the
# repository) when that folder exists and the variable is unset.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
VENV="${IWAE_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
if [ -z "${IWAE_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  IWAE_DATA_DIR="$(cd "$ROOT/../shared/data" && pwd)"
  export IWAE_DATA_DIR
fi
echo "build_book: IWAE_PROFILE=${IWAE_PROFILE:-book} IWAE_DATA_DIR=${IWAE_DATA_DIR:-<unset>}"
exec jupyter-book build . -W -n --keep-going "$@"
