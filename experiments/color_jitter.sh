#!/usr/bin/env bash
# Ablation: colour-jitter strength (report: slower acc_inst rise during warmup, suspected colour jitter).
# Usage: bash experiments/color_jitter.sh [DATA] [extra main_pcl.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-}; shift || true
for cj in 0.0 0.2 0.4; do
  .venv/bin/python main_pcl.py $DATA --color-jitter "$cj" --exp-dir "runs/ablate_cj_$cj" "$@"
done
