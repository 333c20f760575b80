#!/usr/bin/env bash
# The whole staged workflow, ending in a baseline-vs-trained comparison table:
#   sample -> prepare -> baseline_index -> stage1 -> mine1 -> stage2 -> mine2 -> stage3 -> reindex -> evaluate
#
#   bash run_workflow.sh                    built-in sample catalog (small), outputs in data/ and checkpoints/
#   bash run_workflow.sh --raw-dir ~/esci   the real ESCI parquet files (full-size schedule, no budget)
#   bash run_workflow.sh --fast             smoke run on the tiny sample (~2 min)
#   bash run_workflow.sh --from stage2      redo stage2 and every step after it
#   bash run_workflow.sh --raw-dir ../shared/real_esci --resplit-queries 0.5   a small extract, re-split by query hash
#   options: --size tiny|small|full  --data-dir DIR  --checkpoint-dir DIR  --resplit-queries F
#            -- EXTRA_TRAIN_FLAGS...
#
# A step is skipped when its outputs are newer than its inputs, so a rerun after an interruption
# continues (an interrupted training stage resumes from last.pt). A failing step stops the run
# with its name.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
RAW_DIR="" SIZE=small DATA=data CK=checkpoints FROM="" FAST=0 EXTRA=() PREP=()
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW_DIR=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --data-dir) DATA=$2; shift 2 ;;
    --checkpoint-dir) CK=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --resplit-queries) PREP+=(--resplit-queries "$2"); shift 2 ;;
    --fast) FAST=1; SIZE=tiny; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "run_workflow.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
STEPS=(sample prepare baseline_index stage1 mine1 stage2 mine2 stage3 reindex evaluate)
if [ -n "$FROM" ] && [[ ! " ${STEPS[*]} " =~ " $FROM " ]]; then
  echo "run_workflow.sh: --from '$FROM' is not a step (${STEPS[*]})" >&2; exit 2
fi

# Training budget. The sample schedules keep the plan's stages and epochs (2 + 1 + 2) but train
# each epoch on a fresh subset of positives, so the sample run fits ~15 min on 2 CPU cores.
if [ -n "$RAW_DIR" ] || [ "$SIZE" = full ]; then
  TRAIN=(--batch-size 64)
elif [ "$FAST" = 1 ] || [ "$SIZE" = tiny ]; then
  TRAIN=(--batch-size 16 --epoch-pairs 64 --val-corpus-size 200 --val-batches 2)
else
  TRAIN=(--batch-size 64 --epoch-pairs 1024 --val-corpus-size 1000 --val-batches 4)
fi
TRAIN+=("${EXTRA[@]}")
RAW=${RAW_DIR:-$DATA/raw}
# artifact paths come from one place (utils.artifact_paths): INDICES INDICES_BASELINE HN2 HN3 EVAL STAGE1..3 BEST LAST
eval "$($PY utils.py paths "$DATA" "$CK")"

FORCE=0
[ -z "$FROM" ] || FORCE=-1
fresh() {  # fresh STEP OUTPUT -- INPUTS...: true when OUTPUT exists and is newer than every input
  local step=$1 out=$2; shift 3
  [ "$FORCE" = 1 ] && return 1
  [ -e "$out" ] || return 1
  local f
  for f in "$@"; do [ -e "$f" ] && [ "$f" -nt "$out" ] && return 1; done
  return 0
}
step() {  # step NAME OUTPUT INPUTS... -- CMD...: run CMD unless fresh; stop the workflow on failure
  local name=$1 out=$2; shift 2
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  [ "$FORCE" = -1 ] && [ "$name" = "$FROM" ] && FORCE=1
  if [ "$FORCE" != 1 ] && fresh "$name" "$out" -- "${inputs[@]}"; then
    echo "=== [$name] up to date ($out)" >&2; return 0
  fi
  echo "=== [$name] $*" >&2
  local t0=$SECONDS
  "$@" || { echo "run_workflow.sh: step '$name' failed (exit $?); fix it and rerun (finished steps are kept)" >&2; exit 1; }
  echo "=== [$name] done in $((SECONDS - t0))s" >&2
}
train_stage() {  # resume an interrupted stage; start a stage afresh when forced
  local s=$1
  if [ "$FORCE" != 1 ] && [ -e "$LAST" ]; then
    $PY train_two_tower.py --stage "$s" --data-dir "$DATA" --checkpoint-dir "$CK" --resume "${TRAIN[@]}"
  else
    $PY train_two_tower.py --stage "$s" --data-dir "$DATA" --checkpoint-dir "$CK" "${TRAIN[@]}"
  fi
}

T0=$SECONDS
if [ -z "$RAW_DIR" ]; then
  step sample "$RAW/shopping_queries_dataset_examples.parquet" sample_catalog.py -- \
    $PY sample_catalog.py --size "$SIZE" --raw-dir "$RAW"
fi
step prepare "$DATA/prepare_stats.json" "$RAW/shopping_queries_dataset_examples.parquet" \
  "$RAW/shopping_queries_dataset_products.parquet" -- \
  $PY prepare_training_data.py --raw-dir "$RAW" --data-dir "$DATA" "${PREP[@]}"
step baseline_index "$INDICES_BASELINE/metadata.json" "$DATA/products_clean.parquet" -- \
  $PY reindex_with_trained_model.py --baseline --data-dir "$DATA" --index-dir "$INDICES_BASELINE"
step stage1 "$STAGE1" "$DATA/training_pairs.parquet" -- train_stage 1
step mine1 "$HN2" "$STAGE1" -- \
  $PY hard_negative_mining.py --checkpoint "$STAGE1" --data-dir "$DATA" --output "$HN2" --overwrite
step stage2 "$STAGE2" "$STAGE1" "$HN2" -- train_stage 2
step mine2 "$HN3" "$STAGE2" -- \
  $PY hard_negative_mining.py --checkpoint "$STAGE2" --data-dir "$DATA" --output "$HN3" --overwrite
step stage3 "$STAGE3" "$STAGE2" "$HN3" -- train_stage 3
# best_model.pt is what gets indexed, so the index is checked against it
step reindex "$INDICES/metadata.json" "$BEST" "$DATA/products_clean.parquet" -- \
  $PY reindex_with_trained_model.py --checkpoint "$BEST" --data-dir "$DATA" --index-dir "$INDICES"
step evaluate "$EVAL/report.json" "$INDICES/metadata.json" "$INDICES_BASELINE/metadata.json" -- \
  $PY evaluate_trained_model.py --checkpoint "$BEST" --data-dir "$DATA" --out-dir "$EVAL"
[ -f "$EVAL/report.md" ] && cat "$EVAL/report.md"
echo "workflow finished in $((SECONDS - T0))s; report: $EVAL/report.md" >&2
