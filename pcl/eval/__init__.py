"""Evaluation stage: frozen-feature extraction, kNN, linear probes, cluster quality, the encoder to evaluate."""
