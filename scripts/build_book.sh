#!/usr/bin/env bash
# Build the Jupyter Book into _build/html (warnings are errors; every problem is reported).
#
#   bash scripts/build_book.sh [extra jupyter-book build arguments]
#
# Runs scripts/setup.sh first (through scripts/env.sh). IWAE_DATA_DIR defaults to ../shared/data (relative to the
# repository) when that folder exists and the variable is unset.
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, VENV, PY; PATH, IWAE_DATA_DIR
# the chapters turn progress bars and progress lines off (iwae_tutorial.notebook.live)
export IWAE_BOOK_BUILD=1
echo "build_book: IWAE_PROFILE=${IWAE_PROFILE:-book} IWAE_DATA_DIR=${IWAE_DATA_DIR:-<unset>}"
exec jupyter-book build . -W -n --keep-going "$@"
