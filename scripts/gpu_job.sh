#!/usr/bin/env bash
# The device job for Table 1, sized to a window: preflight, correctness checks, the training
# benchmark, then as many whole stages of the paper's schedule as fit, each scored (L_5000 on
# all test images, active units) and written to the stage-wise result file. Every step's output
# lands in $OUT as soon as it exists, and whatever happens (the end, an error, SIGTERM) the
# run's state is packed into $OUT, so the next window continues it.
#
#   bash scripts/gpu_job.sh [--dry-run] [--window-minutes W] [--max-minutes M]
#                           [--batch-size B] [--trainer T] [--budget full|EPOCHS] [--tf32]
#                           [--state DIR]
#   bash scripts/gpu_job.sh --prepare
#
# --dry-run      the same steps on the CPU with a tiny budget ("dry": 200 images, two stages)
#                in its own folder (.device-dry/, or $GPU_JOB_HOME); CI runs it (twice: killed
#                half way, then continued from what the first left in $OUT; tests/test_gpu_job.py).
# --window-minutes W   the whole job ends within W minutes (default 9.5: a command's limit is
#                10); every step's timeout and the table's time come from the time left.
# --max-minutes M      at most M minutes for the table step (default: all the time left).
# --batch-size B, --trainer exact|fast|fast-device, --budget, --tf32: passed to `reproduce`
#                (defaults: 500, fast-device, full): the protocol, named in the result file
#                (e.g. mnist-full-b500-fast-device).
# --state DIR    a folder holding state.tar.xz.part-* from an earlier window: unpacked into
#                the run folder first (default: .device/state when it exists).
# --prepare      copies $IWAE_DATA_DIR/mnist to .device/data/mnist (git-ignored): carry
#                ".device" with the command; it must stay under 64 MiB with the work tree
#                (tests/test_gpu_job.py measures the state plus data).
#
# The device has Python and torch but not this project's venv: the package runs from src/
# (PYTHONPATH). What comes back in $OUT (at most 8 files of at most 16 MiB):
#   job.log  preflight.json  checks.json  benchmark-train.json
#   results/<protocol>.json          the stage-wise table, every stage scored so far
#   state/state.tar.xz.part-NN       the run's state while the table is unfinished (2-3 parts)
#   models.pt                        the furthest scored stage's models, float16 (if room)
# To continue in the next window: copy $OUT/state/ to .device/state/ and run the job again.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0; PREPARE=0; WINDOW_MIN=9.5; MAX_MIN=""; BATCH=500; TRAINER=fast-device; BUDGET=full
TF32=""; STATE_IN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --prepare) PREPARE=1 ;;
    --window-minutes) WINDOW_MIN="$2"; shift ;;
    --max-minutes) MAX_MIN="$2"; shift ;;
    --batch-size) BATCH="$2"; shift ;;
    --trainer) TRAINER="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --state) STATE_IN="$2"; shift ;;
    --tf32) TF32="--tf32" ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "gpu_job: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$PREPARE" = 1 ]; then
  SRC="${IWAE_DATA_DIR:-}"
  if [ -z "$SRC" ] || [ ! -d "$SRC/mnist" ]; then
    echo "gpu_job --prepare: no mnist/ in ${SRC:-\$IWAE_DATA_DIR}; set IWAE_DATA_DIR to the folder holding it" >&2
    exit 2
  fi
  mkdir -p .device/data && cp -r "$SRC/mnist" .device/data/ && chmod -R u+w .device/data
  echo "gpu_job: copied $SRC/mnist to .device/data/mnist (git-ignored; carry \".device\")"
  exit 0
fi

PY="${PYTHON:-python3}"
if [ "$DRY" = 1 ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
END=$("$PY" -c "import sys; print(int($START + float(sys.argv[1]) * 60))" "$WINDOW_MIN") || {
  echo "gpu_job: --window-minutes must be a number, got $WINDOW_MIN" >&2; exit 2; }
left() { echo $(( END - $(date +%s) )); }

if [ "$DRY" = 1 ]; then
  HOME_DIR="${GPU_JOB_HOME:-$ROOT/.device-dry}"; DEVICE=cpu; BUDGET=dry; BATCH=20; TRAINER=fast-device
  BENCH_ARGS=(--steps 2 --rounds 1 --threads 1 --no-bmm-variant --fast-batches 20
    --fast-steps 4)
  EVAL_ARGS=(--eval-batch-size 50 --threads 1)
  : "${IWAE_DATA_DIR:?the dry run needs IWAE_DATA_DIR (the folder holding mnist/)}"
else
  HOME_DIR="$ROOT/.device"; DEVICE=cuda
  BENCH_ARGS=(--steps 20 --rounds 3 --fast-batches "$BATCH" --fast-steps 200)
  EVAL_ARGS=(--eval-batch-size 500)
  : "${IWAE_DATA_DIR:=$HOME_DIR/data}"
fi
export IWAE_DATA_DIR
OUT="${OUT:-$ROOT/artifacts/gpu-job}"
RUN_ROOT="$HOME_DIR/runs"
[ -z "$STATE_IN" ] && [ -d "$HOME_DIR/state" ] && STATE_IN="$HOME_DIR/state"
mkdir -p "$OUT/results" "$RUN_ROOT"
LOG="$OUT/job.log"
: > "$LOG"
log() { echo "[gpu_job $(date -u +%H:%M:%S) $(left)s left] $*" | tee -a "$LOG"; }

CHILD=""; STATUS=0; PROTO=""
# a step in the background, so that SIGTERM reaches the job at once (and is passed on)
run_step() {  # run_step SECONDS cmd...
  local limit="$1"; shift
  if [ "$limit" -le 5 ]; then log "no time left for: $*"; return 124; fi
  timeout "$limit" "$@" >> "$LOG" 2>&1 &
  CHILD=$!
  wait "$CHILD"; local rc=$?
  CHILD=""
  return $rc
}
pack() {
  trap '' TERM INT
  [ -n "$CHILD" ] && { kill -TERM "$CHILD" 2>/dev/null; wait "$CHILD" 2>/dev/null; }
  if [ -n "$PROTO" ] && [ -d "$RUN_ROOT/$PROTO" ]; then
    if grep -q '"status": "complete"' "$OUT/results/$PROTO.json" 2>/dev/null; then
      rm -rf "$OUT/state"
    else
      "$PY" scripts/gpu_state.py pack "$RUN_ROOT/$PROTO" "$OUT/state" >> "$LOG" 2>&1 \
        || log "packing the state FAILED"
    fi
    N=$(find "$OUT" -type f | wc -l)
    if [ "$N" -lt 8 ]; then
      "$PY" scripts/gpu_state.py models "$RUN_ROOT/$PROTO" "$OUT/models.pt" >> "$LOG" 2>&1 || true
    fi
  fi
  find "$OUT" -type f -printf '%P %s\n' | sort | tee -a "$LOG"
  N=$(find "$OUT" -type f | wc -l)
  if [ "$N" -gt 8 ] || find "$OUT" -type f -size +16M | grep -q .; then
    log "WARNING: $OUT holds $N files or one over 16 MiB: not everything comes back"
    STATUS=1
  fi
  log "done (status $STATUS)"
}
trap 'pack; exit $STATUS' EXIT
trap 'log "SIGTERM: stopping the running step, packing"; STATUS=143; exit 143' TERM INT

PROTO="$("$PY" -c "from iwae_tutorial.reproduce import protocol_tag as t; import sys; \
print(t('mnist', sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == '--tf32'))" \
  "$BUDGET" "$BATCH" "$TRAINER" "${TF32:-none}")" || { log "cannot import the package"; PROTO=""; exit 2; }
log "device $DEVICE, protocol $PROTO, window $WINDOW_MIN min, data $IWAE_DATA_DIR, OUT $OUT"

# 0. preflight (seconds): imports, data, free memory; and an earlier window's state
log "0/4 preflight"
if ! run_step 60 "$PY" scripts/gpu_state.py preflight --device "$DEVICE" --out "$OUT/preflight.json"; then
  log "preflight FAILED (see preflight.json): nothing is run"; STATUS=1; exit 1
fi
if [ -n "$STATE_IN" ]; then
  if [ -d "$RUN_ROOT/$PROTO" ]; then
    log "state: $RUN_ROOT/$PROTO exists; $STATE_IN not unpacked over it"
  else
    run_step 120 "$PY" scripts/gpu_state.py unpack "$STATE_IN" "$RUN_ROOT" \
      || { log "unpacking $STATE_IN FAILED"; STATUS=2; exit 2; }
    log "state: continued from $STATE_IN"
  fi
fi

# 1. correctness first: a wrong fast path must not spend the device's time
log "1/4 checks"
if ! run_step "$(( $(left) < 150 ? $(left) - 60 : 150 ))" "$PY" scripts/gpu_checks.py \
    --device "$DEVICE" --out "$OUT/checks.json"; then
  log "checks FAILED (see checks.json): the table is not run"; STATUS=1; exit 1
fi

# 2. the training benchmark: the step time that sizes the table step
log "2/4 training benchmark"
NOISE=counter; [ "$TRAINER" = fast-device ] && NOISE=device
run_step "$(( $(left) < 300 ? $(left) / 4 : 150 ))" "$PY" benchmarks/train_throughput.py \
  --device "$DEVICE" "${BENCH_ARGS[@]}" --fast-noise "$NOISE" \
  --out "$OUT/benchmark-train.json" || log "benchmark failed (carrying on without a step time)"
HINT=$("$PY" - "$OUT/benchmark-train.json" "$BATCH" "$BUDGET" <<'PY' 2>/dev/null
import json, sys
from iwae_tutorial.budgets import resolve_budget
from iwae_tutorial.data.mnist import MNIST_N_TRAIN
b = json.load(open(sys.argv[1]))
fast = [v for v in b.get("fast", {}).values() if v["batch_size"] == int(sys.argv[2])]
n = resolve_budget(sys.argv[3]).n_train or MNIST_N_TRAIN  # the budget's training images
# one fleet (five of the ten trained models) takes about half of a step of all twelve
print(round(min(v["ms_per_fleet_step"] for v in fast) / 1e3 * (n // int(sys.argv[2])) / 2, 3))
PY
)
[ -n "$HINT" ] && log "benchmark: about $HINT s per epoch of one fleet"

# 3 + 4. as many whole stages as fit, each scored; 45 s kept for packing
TABLE_S=$(( $(left) - 45 ))
if [ -n "$MAX_MIN" ]; then
  CAP=$("$PY" -c "import sys; print(int(float(sys.argv[1]) * 60))" "$MAX_MIN")
  [ "$CAP" -lt "$TABLE_S" ] && TABLE_S=$CAP
fi
log "3/4 table: reproduce --budget $BUDGET --batch-size $BATCH --trainer $TRAINER $TF32, $TABLE_S s"
run_step "$(( TABLE_S + 30 ))" "$PY" -m iwae_tutorial reproduce --dataset mnist \
  --budget "$BUDGET" --batch-size "$BATCH" --trainer "$TRAINER" $TF32 --device "$DEVICE" \
  --max-minutes "$("$PY" -c "import sys; print(max(int(sys.argv[1]), 1) / 60)" "$TABLE_S")" \
  --whole-stages ${HINT:+--epoch-seconds-hint "$HINT"} --run-root "$RUN_ROOT" \
  --results-dir "$OUT/results" --no-progress --no-download "${EVAL_ARGS[@]}"
RC=$?
case "$RC" in
  0) log "4/4 table finished: results/$PROTO.json" ;;
  75) log "4/4 table not finished in this window: the stages so far are scored, the state is packed; run the job again with it" ;;
  *) log "table FAILED (exit $RC)"; STATUS=1 ;;
esac
exit "$STATUS"
