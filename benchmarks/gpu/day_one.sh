#!/usr/bin/env bash
# GPU day one: every GPU figure this project lacks, in one command under 9 minutes.
#
#   bash benchmarks/gpu/day_one.sh [--out DIR] [--commit SHA] [--budget-s 525 (dry run: 600)] [--only a,b] [--budget STEP=S]
#   bash benchmarks/gpu/day_one.sh --dry-run [--out DIR]    same steps on this CPU, tiny shapes, no install
#
# Steps, in order, each under `timeout` with its own budget (seconds; a step that ends early hands its
# unused time to the later ones, a later step's budget is never eaten by an earlier one):
#   env        device facts: GPU, driver, CPU, versions, commit                             15
#   install    carried wheels (benchmarks/gpu/wheels) into the device's python, no network  45
#   gpu_tests  pytest -m gpu over the test files that mark tests gpu                       20
#   svd        full-size SVD-XT (random weights) 576x1024, 25 frames, 25 steps, bf16:      215
#              plain diffusers call (best of 2), ours (SDPA), few-step, low-vram, 2 clips
#              in one batch, classic attention, fp16 weights, 2 clips one after the other
#   compile    torch.compile (inductor) rows, compile time apart from the timed clips     160
#   stages     benchmarks/stages_bench.py (CPU side of one story) on every core            70
# Output (in $OUT, else --out DIR; at most 4 files, the device tool brings back 8):
#   results.json  every step's status and figures (rewritten after each step)
#   summary.md    Markdown rows for benchmarks/RESULTS.md (benchmarks/gpu/parse_results.py)
#   day_one.log   this script's own log
#   logs.tar.gz   one log (and one JSON) per step
# Exit status: 0 when every step ended ok or was skipped, 3 when one failed or ran out of time.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
TOOLS="benchmarks/gpu/day_one_tools.py"
DRY=0
OUT_DIR="${OUT:-}"
TOTAL=""
COMMIT=""
ONLY=""
declare -A BUDGET=([env]=15 [install]=45 [gpu_tests]=20 [svd]=215 [compile]=160 [stages]=70)
declare -A DRY_BUDGET=([env]=30 [install]=60 [gpu_tests]=60 [svd]=150 [compile]=150 [stages]=150)
STEPS=(env install gpu_tests svd compile stages)

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --commit) COMMIT="$2"; shift ;;
    --budget-s) TOTAL="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --budget) BUDGET[${2%%=*}]="${2#*=}"; DRY_BUDGET[${2%%=*}]="${2#*=}"; shift ;;
    -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "day_one.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$OUT_DIR" ]; then
  if [ "$DRY" = 1 ]; then OUT_DIR="$REPO/out/day_one-dry"; else
    echo "day_one.sh: no \$OUT and no --out DIR: where should the results go?" >&2; exit 2; fi
fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
rm -f "$OUT_DIR/results.json" "$OUT_DIR/summary.md" "$OUT_DIR/day_one.log" "$OUT_DIR/logs.tar.gz"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/alive-day-one.XXXXXX")"
mkdir -p "$WORK/logs"
LOG="$OUT_DIR/day_one.log"

if [ "$DRY" = 1 ]; then
  PY="${PYTHON:-$REPO/.venv/bin/python}"
  [ -x "$PY" ] || PY="$(command -v python3)"
  for k in "${!DRY_BUDGET[@]}"; do BUDGET[$k]=${DRY_BUDGET[$k]}; done
  [ -n "$TOTAL" ] || TOTAL=600
  export CUDA_VISIBLE_DEVICES=""   # a dry run is a CPU run, whatever the machine has
else
  PY="${PYTHON:-python3}"
fi
[ -n "$TOTAL" ] || TOTAL=525   # the GPU budgets above add up to this: under 9 minutes in all
if [ -n "$ONLY" ]; then
  IFS=, read -r -a STEPS <<<"$ONLY"
  # a fresh GPU machine has nothing installed: install always comes first there; env names the device
  if [ "$DRY" = 0 ] && [[ ",$ONLY," != *",install,"* ]]; then STEPS=(install "${STEPS[@]}"); fi
  if [[ ",$ONLY," != *",env,"* ]]; then STEPS=(env "${STEPS[@]}"); fi
fi
for s in "${STEPS[@]}"; do
  [ -n "${BUDGET[$s]:-}" ] || { echo "day_one.sh: unknown step $s (steps: env install gpu_tests svd compile stages)" >&2; exit 2; }
done

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export ALIVE_DATA_DIR="$WORK/data" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" TRITON_CACHE_DIR="$WORK/triton"
export MPLCONFIGDIR="$WORK/mpl" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

log() { echo "[day_one $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

START=$(date +%s)
DEADLINE=$((START + TOTAL))
log "repo $REPO; out $OUT_DIR; work $WORK; python $PY; dry run $DRY; budget ${TOTAL} s; steps ${STEPS[*]}"

step_cmd() {  # the command of one step, as words
  local s="$1"
  case "$s:$DRY" in
    env:*) echo "$PY $TOOLS env --out $WORK/env.json ${COMMIT:+--commit $COMMIT} $([ "$DRY" = 1 ] && echo --dry-run)" ;;
    install:0) echo "$PY $TOOLS install --wheels benchmarks/gpu/wheels --target /tmp/alive-day-one-site --out $WORK/install.json --env-file $WORK/install.env" ;;
    install:1) echo "$PY $TOOLS install --dry-run --wheels benchmarks/gpu/wheels --target /tmp/alive-day-one-site --out $WORK/install.json --env-file $WORK/install.env" ;;
    gpu_tests:*) echo "$PY $TOOLS gpu-tests --out $WORK/gpu_tests.json" ;;
    svd:0) echo "$PY $TOOLS svd --mode main --device cuda --dtype bf16 --alt-dtype fp16 --shape 576x1024x25x25 --repeats 1 --key-repeats 2 --out $WORK/svd.json" ;;
    svd:1) echo "$PY $TOOLS svd --mode main --tiny --device cpu --dtype fp32 --alt-dtype bf16 --shape 64x128x4x2 --repeats 1 --key-repeats 1 --out $WORK/svd.json" ;;
    compile:0) echo "$PY $TOOLS svd --mode compile --device cuda --dtype bf16 --shape 576x1024x25x25 --repeats 1 --out $WORK/compile.json" ;;
    compile:1) echo "$PY $TOOLS svd --mode compile --tiny --device cpu --dtype fp32 --shape 64x128x4x2 --repeats 1 --compile-backend eager --rows compile --out $WORK/compile.json" ;;
    stages:0) echo "$PY $TOOLS stages --repeat 3 --out $WORK/stages.json" ;;
    stages:1) echo "$PY $TOOLS stages --small --repeat 1 --out $WORK/stages.json" ;;
  esac
}

pack() {  # results.json is rewritten by `record`; the logs travel as one archive
  cp -f "$WORK"/*.json "$WORK/logs/" 2>/dev/null
  tar -czf "$OUT_DIR/logs.tar.gz.part" -C "$WORK" logs && mv -f "$OUT_DIR/logs.tar.gz.part" "$OUT_DIR/logs.tar.gz"
}

FAILED=0
PLANNED_END=$START
declare -a SUMMARY
for i in "${!STEPS[@]}"; do
  s="${STEPS[$i]}"
  reserve=0
  for later in "${STEPS[@]:$((i + 1))}"; do reserve=$((reserve + ${BUDGET[$later]})); done
  PLANNED_END=$((PLANNED_END + ${BUDGET[$s]}))
  now=$(date +%s)
  limit=$((PLANNED_END - now))            # its own budget plus what earlier steps left unused,
  [ $((DEADLINE - now - reserve)) -lt "$limit" ] && limit=$((DEADLINE - now - reserve))  # never a later one's
  steplog="$WORK/logs/$s.log"
  if [ "$limit" -lt 5 ]; then
    log "step $s: SKIPPED (no time left: ${limit} s)"
    "$PY" "$TOOLS" record --results "$OUT_DIR/results.json" --step "$s" --status skipped --budget-s "${BUDGET[$s]}" \
      --reason "no time left" --dry-run "$DRY" --budget-total-s "$TOTAL" >/dev/null 2>&1
    SUMMARY+=("$s skipped (no time left)")
    continue
  fi
  cmd="$(step_cmd "$s")"
  log "step $s: budget ${BUDGET[$s]} s, limit ${limit} s: $cmd"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086  # the command is words on purpose
  timeout --signal=TERM --kill-after=10 "$limit" $cmd >"$steplog" 2>&1
  rc=$?
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124|137) status=timed_out; FAILED=1 ;;
    *) status=failed; FAILED=1 ;;
  esac
  if [ "$s" = gpu_tests ] && [ "$rc" = 0 ] && grep -q '"status": "skipped"' "$WORK/gpu_tests.json" 2>/dev/null; then
    status=skipped
  fi
  if [ "$s" = install ] && [ -s "$WORK/install.env" ]; then
    # shellcheck disable=SC1090
    . "$WORK/install.env"
    log "install: fallback environment: $(cat "$WORK/install.env")"
  fi
  json="$WORK/$s.json"
  "$PY" "$TOOLS" record --results "$OUT_DIR/results.json" --step "$s" --status "$status" --rc "$rc" --wall-s "$wall" \
    --budget-s "$limit" --log-name "logs/$s.log" --json "$json" --dry-run "$DRY" --budget-total-s "$TOTAL" \
    >>"$LOG" 2>&1 || log "could not record step $s"
  log "step $s: $status (rc $rc) in ${wall} s of ${limit} s"
  if [ "$status" != ok ] && [ "$status" != skipped ]; then
    tail -n 15 "$steplog" | sed 's/^/    /' | tee -a "$LOG"
  fi
  SUMMARY+=("$s $status (rc $rc, ${wall} s of ${limit} s)")
  pack
done

log "done in $(( $(date +%s) - START )) s"
{
  echo "steps:"
  for line in "${SUMMARY[@]}"; do echo "  $line"; done
} | tee -a "$LOG"
"$PY" benchmarks/gpu/parse_results.py "$OUT_DIR" >"$OUT_DIR/summary.md" 2>>"$LOG" || log "parse_results failed"
cat "$OUT_DIR/summary.md"
pack
rm -rf "$WORK"
[ "$FAILED" = 0 ] && exit 0 || exit 3
