#!/usr/bin/env bash
# Run every check: lint, unit tests, the notebooks (executed with the smoke profile), and the
# built book opened in headless Chromium.
#
#   bash scripts/test.sh
#
# Runs scripts/setup.sh first (through scripts/env.sh). IWAE_DATA_DIR defaults to ../shared/data (relative to the
# repository) when that folder exists and the variable is unset. Every step runs even if an
# earlier one fails; the exit status is non-zero when any step failed.
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"  # ROOT, VENV, PY; PATH, IWAE_DATA_DIR
echo "test: IWAE_DATA_DIR=${IWAE_DATA_DIR:-<unset: data-dependent tests may skip>}"

NAMES=()
RESULTS=()
FAILED=0
record() {  # name, exit status, [text shown instead of FAILED/ok]
  NAMES+=("$1")
  if [ "$2" -eq 0 ]; then RESULTS+=("${3:-ok}"); else RESULTS+=("FAILED (exit $2)"); FAILED=1; fi
}
step() {  # name, command...: run the command, record its status, carry on
  local name="$1"; shift
  echo
  echo "=== $name: $*"
  local rc=0
  "$@" || rc=$?
  record "$name" "$rc"
}

# 1. lint
LINT_PATHS=()
for d in src tests benchmarks scripts; do [ -d "$d" ] && LINT_PATHS+=("$d"); done
step "ruff" "$PY" -m ruff check "${LINT_PATHS[@]}"

# 2. unit tests (the browser test, which builds the book, is step 4)
step "pytest" "$PY" -m pytest tests -q -m "not browser and not gpujob"

# 3. notebooks, executed with the smoke profile (outputs compared leniently)
shopt -s nullglob
NOTEBOOKS=(notebooks/*.ipynb)
shopt -u nullglob
if [ "${#NOTEBOOKS[@]}" -gt 0 ]; then
  echo
  echo "=== nbval: IWAE_PROFILE=smoke IWAE_RETRAIN=1 pytest --nbval-lax notebooks/ -q"
  rc=0
  # IWAE_RETRAIN=1: the chapters train their models here instead of loading the shipped ones,
  # so their training code runs too (tests/test_fresh_kernel.py runs a chapter the other way)
  IWAE_PROFILE=smoke IWAE_RETRAIN=1 "$PY" -m pytest --nbval-lax notebooks/ -q || rc=$?
  if [ "$rc" -eq 5 ]; then
    record "nbval" 0 "ok (no notebook cells collected)"
  else
    record "nbval" "$rc"
  fi
else
  record "nbval" 0 "skipped (no notebooks/*.ipynb)"
fi

# 4. the device job's dry run: the same steps as on a GPU, on the CPU with a tiny budget,
#    killed half way by SIGTERM, then continued from what it left in $OUT
step "gpu-job-dry-run" "$PY" -m pytest tests/test_gpu_job.py -q -m gpujob

# 5. the book, built with the smoke profile and opened page by page in headless Chromium
#    (screenshots in artifacts/screenshots/); installs chromium + chromium-driver if missing
step "browser-install" bash scripts/install_browser.sh
step "browser" "$PY" -m pytest tests -q -m browser

echo
echo "=== summary"
for i in "${!NAMES[@]}"; do
  printf '  %-8s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
done
if [ "$FAILED" -ne 0 ]; then
  echo "test: FAILED"
  exit 1
fi
echo "test: all passed"
