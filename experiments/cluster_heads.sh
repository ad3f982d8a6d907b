#!/usr/bin/env bash
# Ablation: task-specific projection heads (research report, change 1).
#   none   = original PCL (clustering + ProtoNCE on the shared MoCo v2 head)
#   mlp    = extra Linear-ReLU-Linear cluster head (no final ReLU)
#   report = the report's exact Linear(128,128)+ReLU (features in the positive orthant)
# Usage: bash experiments/cluster_heads.sh [DATA] [extra main_pcl.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-}; shift || true
for head in none mlp report; do
  .venv/bin/python main_pcl.py $DATA --cluster-head "$head" --exp-dir "runs/ablate_head_$head" "$@"
done
echo "compare: tensorboard --logdir runs --samples_per_plugin scalars=0  (tags epoch/acc_inst, eval/knn_top1)"
