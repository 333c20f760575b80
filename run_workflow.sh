#!/usr/bin/env bash
# The whole staged workflow, ending in a baseline-vs-trained comparison table:
#   sample -> prepare -> baseline_index -> bm25_index -> stage1 -> mine1 -> stage2 -> mine2 -> stage3 -> reindex -> evaluate
#
#   bash run_workflow.sh                    built-in sample catalog (small), outputs in data/ and checkpoints/
#   bash run_workflow.sh --raw-dir ~/esci   the real ESCI parquet files (full-size schedule, no budget)
#   bash run_workflow.sh --fast             smoke run on the tiny sample (~2 min)
#   bash run_workflow.sh --dry-run          list the steps that would run, and why; run nothing
#   bash run_workflow.sh --from stage2      redo stage2 and every step after it
#   bash run_workflow.sh --raw-dir ../shared/real_esci --resplit-queries 0.5   a small extract, re-split by query hash
#   options: --size tiny|small|full  --data-dir DIR  --checkpoint-dir DIR  --resplit-queries F
#            --only STEP  --to STEP  --force (redo the selected steps)  --quiet (no progress bars)
#            --mine-flags "FLAGS" (extra hard_negative_mining.py flags for both mining steps, e.g.
#            "--false-negative-margin 0.1 --num-negatives 30")  --version  -- EXTRA_TRAIN_FLAGS...
#
# A step is up to date when its output exists and the record of its last finished run
# (DATA_DIR/workflow_state/STEP.json) has the same options and the same input files (path, size,
# modification time); otherwise it runs, and so does every step that reads its output. Each step
# says why it runs or is skipped. Only a training stage that was interrupted with the same inputs
# resumes from last.pt; a finished stage whose inputs changed trains afresh. A failing step stops
# the run with its name (exit 1); bad options exit 2.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
RAW_DIR="" SIZE=small DATA=data CK=checkpoints FROM="" ONLY="" TO="" FORCE_ALL=0 DRY=0 FAST=0 EXTRA=() PREP=() QUIET=() MINE=()
SAMPLE_SEED=0  # = cli.SAMPLE_SEED, the sample catalog sample_catalog.py and prepare --make-sample build by default
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in  # an option that takes a value must have one
    --raw-dir|--size|--data-dir|--checkpoint-dir|--from|--only|--to|--resplit-queries|--mine-flags)
      [ $# -ge 2 ] || { echo "run_workflow.sh: $1 needs a value (see --help)" >&2; exit 2; } ;;
  esac
  case "$1" in
    --raw-dir) RAW_DIR=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --data-dir) DATA=$2; shift 2 ;;
    --checkpoint-dir) CK=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --to) TO=$2; shift 2 ;;
    --force) FORCE_ALL=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --resplit-queries) PREP+=(--resplit-queries "$2"); shift 2 ;;
    --fast) FAST=1; SIZE=tiny; shift ;;
    --quiet) QUIET=(--quiet); shift ;;
    --mine-flags) read -r -a MINE <<< "$2"; shift 2 ;;
    --version) $PY paths.py version; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_workflow.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
STEPS=(sample prepare baseline_index bm25_index stage1 mine1 stage2 mine2 stage3 reindex evaluate)
for opt in FROM ONLY TO; do
  v=${!opt}
  if [ -n "$v" ] && [[ ! " ${STEPS[*]} " =~ " $v " ]]; then
    echo "run_workflow.sh: --${opt,,} '$v' is not a step (${STEPS[*]})" >&2; exit 2
  fi
done
case "$SIZE" in tiny|small|full) ;; *) echo "run_workflow.sh: --size '$SIZE' is not tiny, small or full" >&2; exit 2 ;; esac

# Training budget. The sample schedules keep the stages and epochs (1 + 1 + 1) but train
# each epoch on a fresh subset of positives, so the sample run fits ~15 min on 2 CPU cores. The
# batch size is train_two_tower.py's auto: 64 on ESCI-size data, 32 on the sample's 1,024 positives
# an epoch, 16 on a few hundred (a small extract or --fast).
if [ -n "$RAW_DIR" ] || [ "$SIZE" = full ]; then
  TRAIN=()
elif [ "$FAST" = 1 ] || [ "$SIZE" = tiny ]; then
  TRAIN=(--epoch-pairs 64 --val-corpus-size 200 --val-batches 2)
else
  TRAIN=(--epoch-pairs 1024 --val-corpus-size 1000 --val-batches 4)
fi
TRAIN+=("${EXTRA[@]}")
RAW=${RAW_DIR:-$DATA/raw}
STATE=$DATA/workflow_state
# artifact paths come from one place (paths.artifact_paths): INDICES INDICES_BASELINE HN2 HN3 RANKS3 EVAL STAGE1..3 BEST LAST
eval "$($PY paths.py paths "$DATA" "$CK")"

index_of() { local i; for i in "${!STEPS[@]}"; do [ "${STEPS[$i]}" = "$1" ] && echo "$i"; done; return 0; }
PENDING=()   # outputs of the steps run (or, with --dry-run, that would run) so far
RESUME=0 STEP_FORCE=""
step() {  # step NAME OUTPUT INPUTS... -- CMD...: run CMD unless up to date; stop the workflow on failure
  local name=$1 out=$2; shift 2
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  local opts="$*" i; i=$(index_of "$name")
  [ "$1" = "$PY" ] && opts="${*:2}"  # the interpreter's path is not an option of the step
  [ "$1" = train_stage ] && opts="train_two_tower.py --stage $2 --data-dir $DATA --checkpoint-dir $CK ${TRAIN[*]}"
  if [ -n "$ONLY" ] && [ "$name" != "$ONLY" ]; then return 0; fi
  if [ -n "$TO" ] && [ "$i" -gt "$(index_of "$TO")" ]; then return 0; fi
  local force=() verdict why
  [ -n "$STEP_FORCE" ] && force=(--force "$STEP_FORCE")
  [ "$FORCE_ALL" = 1 ] && force=(--force "forced (--force)")
  [ -n "$FROM" ] && [ "$i" -ge "$(index_of "$FROM")" ] && force=(--force "redone from $FROM (--from)")
  local pend=()  # with --dry-run nothing is rewritten: name the outputs that would be
  [ "$DRY" = 1 ] && for f in "${PENDING[@]+"${PENDING[@]}"}"; do pend+=(--pending "$f"); done
  IFS=$'\t' read -r verdict why < <($PY workflow_state.py check --options="$opts" "${force[@]+"${force[@]}"}" \
    "${pend[@]+"${pend[@]}"}" "$STATE" "$name" "$out" "${inputs[@]+"${inputs[@]}"}")
  if [ "$verdict" = skip ]; then
    echo "=== [$name] up to date ($out)" >&2; return 0
  fi
  PENDING+=("$out"); [ "$1" = train_stage ] && PENDING+=("$BEST")
  [ "$name" = prepare ] && PENDING+=("$DATA"/{products_clean,training_pairs,val_pairs,ground_truth}.parquet)
  if [ "$DRY" = 1 ]; then
    echo "$name would $verdict: $why"; return 0
  fi
  echo "=== [$name] $verdict: $why" >&2
  echo "=== [$name] $*" >&2
  RESUME=0; [ "$verdict" = resume ] && RESUME=1
  $PY workflow_state.py start --options="$opts" "$STATE" "$name" "${inputs[@]+"${inputs[@]}"}"
  local t0=$SECONDS rc=0
  "$@" --overwrite "${QUIET[@]+"${QUIET[@]}"}" || rc=$?  # the workflow decided this step runs: it replaces the step's old outputs
  if [ "$rc" != 0 ]; then
    echo "run_workflow.sh: step '$name' failed (exit $rc); fix it and rerun (finished steps are kept)" >&2; exit 1
  fi
  $PY workflow_state.py done "$STATE" "$name"
  echo "=== [$name] done in $((SECONDS - t0))s" >&2
}
train_stage() {  # resume only a stage whose earlier run with the same inputs was interrupted
  local s=$1 resume=(); shift
  [ "$RESUME" = 1 ] && [ -e "$LAST" ] && resume=(--resume)
  $PY train_two_tower.py --stage "$s" --data-dir "$DATA" --checkpoint-dir "$CK" "${resume[@]+"${resume[@]}"}" "${TRAIN[@]}" "$@"
}

T0=$SECONDS
if [ -z "$RAW_DIR" ]; then
  IFS=$'\t' read -r origin why < <($PY workflow_state.py sample "$RAW" "$SIZE" "$SAMPLE_SEED")
  if [ "$origin" = foreign ]; then echo "run_workflow.sh: $why" >&2; exit 2; fi
  [ "$origin" = other ] && STEP_FORCE=$why
  if [ "$origin" = ours ] && [ ! -e "$STATE/sample.json" ] && [ "$DRY" = 0 ]; then  # made before records existed
    $PY workflow_state.py start --options="sample_catalog.py --size $SIZE --sample-seed $SAMPLE_SEED --raw-dir $RAW" "$STATE" sample
    $PY workflow_state.py done "$STATE" sample
  fi
  step sample "$RAW/shopping_queries_dataset_examples.parquet" -- \
    $PY sample_catalog.py --size "$SIZE" --sample-seed "$SAMPLE_SEED" --raw-dir "$RAW"
  STEP_FORCE=""
fi
step prepare "$DATA/prepare_stats.json" "$RAW/shopping_queries_dataset_examples.parquet" \
  "$RAW/shopping_queries_dataset_products.parquet" -- \
  $PY prepare_training_data.py --raw-dir "$RAW" --data-dir "$DATA" "${PREP[@]+"${PREP[@]}"}"
step baseline_index "$INDICES_BASELINE/metadata.json" "$DATA/products_clean.parquet" -- \
  $PY reindex_with_trained_model.py --baseline --data-dir "$DATA" --out-dir "$INDICES_BASELINE"
step bm25_index "$INDICES_BM25/metadata.json" "$DATA/products_clean.parquet" -- \
  $PY reindex_with_trained_model.py --bm25 --data-dir "$DATA" --out-dir "$INDICES_BM25"
step stage1 "$STAGE1" "$DATA/training_pairs.parquet" "$DATA/val_pairs.parquet" "$DATA/products_clean.parquet" \
  "$DATA/ground_truth.parquet" -- train_stage 1
step mine1 "$HN2" "$STAGE1" -- \
  $PY hard_negative_mining.py --checkpoint "$STAGE1" --data-dir "$DATA" --output "$HN2" "${MINE[@]+"${MINE[@]}"}"
step stage2 "$STAGE2" "$STAGE1" "$HN2" -- train_stage 2
# mine2's last output is the positive ranks stage 3 reads (--focus-rank); it is written after $HN3
step mine2 "$RANKS3" "$STAGE2" -- \
  $PY hard_negative_mining.py --checkpoint "$STAGE2" --data-dir "$DATA" --output "$HN3" "${MINE[@]+"${MINE[@]}"}"
step stage3 "$STAGE3" "$STAGE2" "$HN3" "$RANKS3" -- train_stage 3
# best_model.pt is what gets indexed: the index and the report are checked against it
step reindex "$INDICES/metadata.json" "$BEST" "$DATA/products_clean.parquet" -- \
  $PY reindex_with_trained_model.py --checkpoint "$BEST" --data-dir "$DATA" --out-dir "$INDICES"
step evaluate "$EVAL/report.json" "$BEST" "$INDICES/metadata.json" "$INDICES_BASELINE/metadata.json" \
  "$INDICES_BM25/metadata.json" -- \
  $PY evaluate_trained_model.py --checkpoint "$BEST" --data-dir "$DATA" --out-dir "$EVAL"
if [ "$DRY" = 1 ]; then
  [ "${#PENDING[@]}" = 0 ] && echo "nothing to do: every step is up to date"
  exit 0
fi
[ -f "$EVAL/report.md" ] && [ -z "$ONLY$TO" ] && cat "$EVAL/report.md"
echo "workflow finished in $((SECONDS - T0))s; report: $EVAL/report.md" >&2
