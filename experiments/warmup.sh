#!/usr/bin/env bash
# Ablation: InfoNCE-only warmup length before ProtoNCE / the cluster head trains (report: "more warmup").
# Usage: bash experiments/warmup.sh [DATA] [extra main_pcl.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-}; shift || true
for w in 1 3 5; do
  .venv/bin/python main_pcl.py $DATA --warmup-epochs "$w" --cluster-head mlp --exp-dir "runs/ablate_warmup_$w" "$@"
done
