"""Evaluation stage: the protocol registry and its protocols (kNN, linear probes, low-shot SVMs, fine-tuning,
k-means, the run's clusters), the shared context and frozen features, the encoder to evaluate, pictures."""
