"""Run-folder stage: the exp-dir layout and its lock, checkpoints and resume checks, metrics.json, TensorBoard."""
