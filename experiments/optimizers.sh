#!/usr/bin/env bash
# Optimizers and mixed precision at the same budget (research report, change 3); prints one table row per run.
# Time is wall-clock on the machine it runs on; compare rows of one invocation only.
# Usage: bash experiments/optimizers.sh [DATA] [extra main_pcl.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-}; shift || true
run() {  # name, flags...
  local name=$1; shift
  local start=$SECONDS
  .venv/bin/python main_pcl.py $DATA --exp-dir "runs/opt_$name" "$@" > "runs/opt_$name.log" 2>&1 || true
  local knn skipped
  knn=$(grep -ao 'final kNN top-1: [0-9.]*' "runs/opt_$name.log" | awk '{print $4}')
  skipped=$(tr '\r' '\n' < "runs/opt_$name.log" | grep -a '^epoch [0-9]*:' | grep -ao 'skipped [0-9]*' | awk '{s+=$2} END {print s+0}')
  printf '| %-16s | %6s | %4s | %5ss |\n' "$name" "${knn:-failed}" "$skipped" "$((SECONDS - start))"
}
mkdir -p runs
echo "| run              | kNN top-1 | skipped | time |"
run sgd-cos      --optimizer sgd-cos "$@"
run sgd-cos-bf16 --optimizer sgd-cos --amp bf16 "$@"
run adamw        --optimizer adamw "$@"      # per-optimizer defaults: lr 1e-3, wd 0.05, no decay on BN/bias, 1 warmup epoch
run adamw-bf16   --optimizer adamw --amp bf16 "$@"
run lamb         --optimizer lamb "$@"       # lr 3e-3, wd 0.05, no decay/adaptation on BN/bias, 1 warmup epoch
run lars         --optimizer lars "$@"       # lr 0.3, wd 5e-4, no decay/adaptation on BN/bias, 1 warmup epoch
