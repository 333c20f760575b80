#!/usr/bin/env bash
# One-lever screen of a single training stage, starting from the checkpoints of a finished workflow
# run of bench/bench_quality.py (its work dir holds data/ and ck/), scored by bench_quality.py.
#
#   stage 1: train stage 1 alone with FLAGS
#   stage 2: mine from the run's stage1.pt with MINE_FLAGS, train stage 2 with FLAGS
#   stage 3: from the run's stage-2 model (and its mined stage-3 files), train stage 3 with FLAGS
# and score every epoch the screened stage wrote (one by default; two with --epochs 2): its last as
# <NAME>, an earlier one as <NAME>_e<EPOCH>.
#
# Usage: bash bench/screen_stage.sh WORK_DIR STAGE NAME "MINE_FLAGS" [TRAIN_FLAGS...]
# Example (the docs/experiments.md 0.7.0 table; WORK_DIR made by
#   python bench/bench_quality.py --raw-dir ../shared/real_homedepot --resplit-queries 0.3 --tag hd_v060):
#   bash bench/screen_stage.sh bench/out/quality_work/hd_v060 1 typos02 "" --query-typos 0.2
#   bash bench/screen_stage.sh bench/out/quality_work/hd_v060 2 skip10 "--skip-top 10"
#   bash bench/screen_stage.sh bench/out/quality_work/hd_v060 3 c0 "" --label-weights C=0
# Writes bench/out/quality_<SET>_s<STAGE>_<NAME>[_e<EPOCH>].json/.md and the stage's train_metrics.json
# (bench/out/quality_<SET>_s<STAGE>_<NAME>_train_metrics.json; SET is hd, or see RAW_DIR below);
# scratch under ${TMPDIR:-/tmp}.
# PEERS="plain,cached" (default plain) names the peer models the score compares with; PEERS="" for a
# work dir without peers (bench_quality.py --peers "" then trains none). Pass the run's seed among the
# TRAIN_FLAGS (--seed S) when the run was not made with the default 42. RAW_DIR and RESPLIT (default
# ../shared/real_homedepot and 0.3) name the run's data; RAW_DIR="" for a run on the built-in sample.
set -euo pipefail
[[ $# -ge 4 ]] || { echo "usage: $0 WORK_DIR STAGE NAME \"MINE_FLAGS\" [TRAIN_FLAGS...]" >&2; exit 2; }
W=$1 STAGE=$2 NAME=$3 MINE_FLAGS=$4
shift 4
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SRC=(--raw-dir "${RAW_DIR-../shared/real_homedepot}" --resplit-queries "${RESPLIT:-0.3}")
[[ -n ${RAW_DIR-x} ]] || SRC=()  # RAW_DIR="": a work dir of the built-in sample (bench_quality.py's default)
SET=hd  # the name's prefix in bench/out: hd, the raw dir's name, or sample
[[ -n ${RAW_DIR+x} ]] && SET=$(basename "${RAW_DIR:-sample}")
SCRATCH=${TMPDIR:-/tmp}/screen_s${STAGE}_${NAME}
[[ -f $W/ck/progress.json && -d $W/data ]] || { echo "$W: no finished workflow run (data/, ck/progress.json)" >&2; exit 2; }
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH/ck"
CK=$SCRATCH/ck DATA=$W/data

# progress.json of the run truncated to the stages before STAGE, so train_two_tower.py starts STAGE;
# copies the run's checkpoints of those stages (stageK.pt, their epoch_N.pt, best_model.pt = their best)
keep_stages() {
  local kept
  kept=$("$PY" - "$W/ck/progress.json" "$CK/progress.json" "$1" <<'PY'
import json, sys
src, dst, upto = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = json.load(open(src))
hist = [h for h in p["history"] if h["stage"] <= upto]
best = min(hist, key=lambda h: h["val_loss"])
json.dump({"stage": upto, "epoch": max(h["epoch"] for h in hist) + 1, "batch": 0, "step": 0, "stage_done": upto,
           "history": hist, "stages": [s for s in p["stages"] if s["stage"] <= upto],
           "best": {"recall@10": best["recall@10"], "ndcg@10": best["ndcg@10"], "val_loss": best["val_loss"],
                    "score": -best["val_loss"], "select": "val_loss", "epoch": best["epoch"],
                    "stage": best["stage"]}}, open(dst, "w"))
print(best["epoch"], *[h["epoch"] for h in hist])
PY
  )
  local best=${kept%% *} e k
  KEPT=${kept##* }  # the last epoch of the kept stages: the screened stage writes the ones after it
  for e in ${kept#* }; do cp "$W/ck/epoch_$e.pt" "$CK/"; done
  for ((k = 1; k <= $1; k++)); do cp "$W/ck/stage$k.pt" "$CK/"; done
  cp "$CK/epoch_$best.pt" "$CK/best_model.pt"
}

score() {  # checkpoint, tag
  "$PY" bench/bench_quality.py "${SRC[@]+"${SRC[@]}"}" --reuse-peer --work-dir "$W" \
    --checkpoint "$1" --tag "$2" --peers "${PEERS-plain}"
}

KEPT=0
case $STAGE in
  1) ;;
  2)
    DATA=$SCRATCH/data
    cp -r "$W/data" "$DATA"
    rm -rf "$DATA/eval" "$DATA/indices" "$DATA/workflow_state" "$DATA"/hard_negatives_stage3*
    keep_stages 1
    "$PY" hard_negative_mining.py --checkpoint "$CK/stage1.pt" --data-dir "$DATA" \
      --output "$DATA/hard_negatives_stage2.parquet" --overwrite --quiet $MINE_FLAGS ;;
  3) keep_stages 2 ;;
  *) echo "STAGE must be 1, 2 or 3" >&2; exit 2 ;;
esac
"$PY" train_two_tower.py --stage "$STAGE" --data-dir "$DATA" --checkpoint-dir "$CK" --quiet "$@"
LAST=$(ls "$CK" | sed -n 's/^epoch_\([0-9]*\)\.pt$/\1/p' | sort -n | tail -1)
for ((e = KEPT + 1; e <= LAST; e++)); do  # the epochs this stage wrote; its last one untagged
  tag=${SET}_s${STAGE}_$NAME
  ((e == LAST)) || tag+=_e$e
  score "$CK/epoch_$e.pt" "$tag"
done
cp "$CK/train_metrics.json" "bench/out/quality_${SET}_s${STAGE}_${NAME}_train_metrics.json"  # times, val record
rm -rf "$SCRATCH"
