#!/usr/bin/env bash
# The device job for Table 1: correctness checks, the training benchmark, the table within a
# time budget (resumable), L_5000 on all 10,000 test images for all 12 models; everything it
# brings back goes to $OUT (at most 8 files of at most 16 MiB).
#
#   bash scripts/gpu_job.sh [--dry-run] [--max-minutes M] [--batch-size B] [--trainer T]
#                           [--budget full|EPOCHS] [--tf32]
#
# --dry-run    the same steps on the CPU with a tiny budget (seconds to minutes): CI runs it.
# --max-minutes M   wall-clock budget of the table step (default 6; the whole job stays
#              under M + 3 minutes); the run stops cleanly (state saved) when it is reached.
# --batch-size B, --trainer exact|fast, --budget, --tf32: passed to `reproduce` (defaults:
#              500, fast, full): the protocol, named in the result file (mnist-full-b500-fast).
#
# The device has Python and torch but not this project's venv: the package runs from src/
# (PYTHONPATH). Data: IWAE_DATA_DIR (default .device/data, a git-ignored folder; fill it with
# `bash scripts/gpu_job.sh --prepare`, which copies $IWAE_DATA_DIR/mnist there, and carry
# ".device" with the command). State: .device/runs (carry it too). When the table did not
# finish, $OUT/state.tar holds its state; unpack it into .device/runs/ and run the job again to
# continue. What comes back:
#   $OUT/job.tar.gz       job.log, checks.json, benchmark-train.json, results/*.json (the
#                         stage-wise table: every stage scored so far)
#   $OUT/state.tar        the run's state (only while the table is not finished)
#   $OUT/models/*.pt      the models of the furthest scored stage, float16, sharded
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0; PREPARE=0; MAX_MIN=""; BATCH=500; TRAINER=fast; BUDGET=full; TF32=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --prepare) PREPARE=1 ;;
    --max-minutes) MAX_MIN="$2"; shift ;;
    --batch-size) BATCH="$2"; shift ;;
    --trainer) TRAINER="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --tf32) TF32="--tf32" ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "gpu_job: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$PREPARE" = 1 ]; then
  SRC="${IWAE_DATA_DIR:-$ROOT/../shared/data}"
  if [ ! -d "$SRC/mnist" ]; then
    echo "gpu_job --prepare: no mnist/ in $SRC; set IWAE_DATA_DIR to the folder holding it" >&2
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
OUT="${OUT:-$ROOT/artifacts/gpu-job}"
WORK="$ROOT/.device/job"          # everything that is packed into job.tar.gz
RUN_ROOT="$ROOT/.device/runs"
mkdir -p "$OUT" "$WORK/results" "$RUN_ROOT"
LOG="$WORK/job.log"
: > "$LOG"
log() { echo "[gpu_job $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; BUDGET=smoke; BATCH=20; MAX_MIN="${MAX_MIN:-3}"; BENCH_ARGS=(--steps 2 --rounds 1
    --threads 1 --no-bmm-variant --fast-batches 20 --fast-steps 4)
  EVAL_ARGS=(--eval-batch-size 50)
  : "${IWAE_DATA_DIR:=$ROOT/../shared/data}"
else
  DEVICE=cuda; MAX_MIN="${MAX_MIN:-6}"; BENCH_ARGS=(--steps 20 --rounds 3 --fast-batches 20 "$BATCH" --fast-steps 200)
  EVAL_ARGS=(--eval-batch-size 500)
  : "${IWAE_DATA_DIR:=$ROOT/.device/data}"
fi
export IWAE_DATA_DIR
PROTO="$("$PY" -c "from iwae_tutorial.reproduce import protocol_tag as t; import sys; \
print(t('mnist', sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == '--tf32'))" \
  "$BUDGET" "$BATCH" "$TRAINER" "${TF32:-none}")" || { log "cannot import the package"; exit 2; }
log "device $DEVICE, protocol $PROTO, table budget $MAX_MIN min, data $IWAE_DATA_DIR, OUT $OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  2>&1 | tee -a "$LOG"

STATUS=0
# 1. correctness first: a wrong fast path must not spend the device's time
log "1/4 checks"
if ! timeout 180 "$PY" scripts/gpu_checks.py --device "$DEVICE" --out "$WORK/checks.json" \
    >> "$LOG" 2>&1; then
  log "checks FAILED (see checks.json): the table is not run"
  STATUS=1
fi

# 2. the training benchmark (time per step at batch 20 and at the chosen batch, projections)
if [ "$STATUS" = 0 ]; then
  log "2/4 training benchmark"
  timeout 240 "$PY" benchmarks/train_throughput.py --device "$DEVICE" "${BENCH_ARGS[@]}" \
    --out "$WORK/benchmark-train.json" >> "$LOG" 2>&1 || log "benchmark failed (carrying on)"
fi

# 3 + 4. the table (train, then L_5000 on all test images), within the time budget
if [ "$STATUS" = 0 ]; then
  log "3/4 table: reproduce --budget $BUDGET --batch-size $BATCH --trainer $TRAINER $TF32"
  timeout "$("$PY" -c "import sys; print(int(float(sys.argv[1]) * 60 + 120))" "$MAX_MIN")" "$PY" -m iwae_tutorial reproduce --dataset mnist \
    --budget "$BUDGET" --batch-size "$BATCH" --trainer "$TRAINER" $TF32 --device "$DEVICE" \
    --max-minutes "$MAX_MIN" --run-root "$RUN_ROOT" --results-dir "$WORK/results" \
    --no-progress --no-download "${EVAL_ARGS[@]}" >> "$LOG" 2>&1
  RC=$?
  case "$RC" in
    0) log "4/4 table finished: $WORK/results/$PROTO.json" ;;
    75) log "4/4 table not finished within $MAX_MIN min: state saved; run the job again" ;;
    *) log "table FAILED (exit $RC)"; STATUS=1 ;;
  esac
fi

# pack what comes back: at most 8 files of at most 16 MiB. The models of the furthest scored
# stage of each fleet (1L, 2L) as float16 shards; while the table is not complete, the run's
# state (fleet checkpoints, fast-trainer state, stage results) as one tar file.
RUN="$RUN_ROOT/$PROTO"
if [ -f "$WORK/results/$PROTO.json" ]; then
  "$PY" - "$RUN" "$OUT/models" <<'PY' >> "$LOG" 2>&1
import sys
from pathlib import Path
from iwae_tutorial.checkpoints import save_sharded
from iwae_tutorial.runs import load_run
run, out = Path(sys.argv[1]), Path(sys.argv[2])
models = {}
for part in ("1L", "2L"):
    stages = sorted(d for d in (run / part / "stages").glob("epoch-*") if (d / "fleet.json").exists())
    if not stages:
        continue
    for d in sorted(p for p in stages[-1].iterdir() if p.is_dir()):
        model, cfg, history = load_run(d)
        models[d.name] = {"model": {k: v.half() for k, v in model.state_dict().items()},
                          "model_config": model.config, "epochs": len(history)}
files = save_sharded(out, {"members": models, "dtype": "float16"})
print("models:", [f.name for f in files])
PY
fi
if ! grep -q '"status": "complete"' "$WORK/results/$PROTO.json" 2>/dev/null && [ -d "$RUN" ]; then
  tar -cf "$OUT/state.tar" -C "$RUN_ROOT" --exclude='stages/*/*/checkpoint.pt' "$PROTO" \
    2>>"$LOG" || true
fi
for part in 1L 2L; do
  cp "$RUN/$part/log.jsonl" "$WORK/train-log-$part.jsonl" 2>/dev/null || true
done
log "packing $OUT/job.tar.gz"
tar -czf "$OUT/job.tar.gz" -C "$WORK" . 2>>"$LOG"
find "$OUT" -type f -printf '%P %s\n' | tee -a "$LOG"
N_FILES=$(find "$OUT" -type f | wc -l)
if [ "$N_FILES" -gt 8 ] || find "$OUT" -type f -size +16M | grep -q .; then
  log "WARNING: $OUT holds $N_FILES files or one over 16 MiB: not everything comes back"
  STATUS=1
fi
exit "$STATUS"
