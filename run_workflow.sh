#!/usr/bin/env bash
# The staged workflow on the built-in sample catalog (or on real ESCI files with --raw-dir DIR).
# Steps so far: sample catalog -> prepare. Later phases are added here as they land.
#
#   bash run_workflow.sh                      # sample catalog (small), outputs in data/
#   bash run_workflow.sh --raw-dir ~/esci     # real ESCI parquet files
#   bash run_workflow.sh --size tiny          # smoke run
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
RAW_DIR="" SIZE=small DATA_DIR=data
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW_DIR=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --data-dir) DATA_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "run_workflow.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

step() {  # step NAME CMD...: run one stage, stop the workflow with its name if it fails
  local name=$1; shift
  echo "=== [$name] $*" >&2
  "$@" || { echo "run_workflow.sh: step '$name' failed (exit $?)" >&2; exit 1; }
}

if [ -z "$RAW_DIR" ]; then
  step prepare $PY prepare_training_data.py --make-sample "$SIZE" --raw-dir "$DATA_DIR/raw" --data-dir "$DATA_DIR"
else
  step prepare $PY prepare_training_data.py --raw-dir "$RAW_DIR" --data-dir "$DATA_DIR"
fi
echo "workflow finished; outputs in $DATA_DIR/" >&2
