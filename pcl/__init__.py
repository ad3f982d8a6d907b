"""Prototypical Contrastive Learning (PCL): one sub-package per stage of the EM loop.

- ``data``: data sets, transforms, loaders, image cache, GPU augmentation
- ``model``: backbones, projection heads, the PCL builder (queue, momentum update)
- ``losses``: InfoNCE and ProtoNCE, and the objective that adds them
- ``estep``: feature shards, faiss k-means, prototypes and concentrations (the E-step)
- ``train``: the engine (the EM loop), optimizers and schedules, AMP, meters, signals
- ``run``: the exp-dir (layout, lock, checkpoints, resume checks, metrics.json, TensorBoard)
- ``eval``: frozen features, kNN, linear probes, cluster quality
- ``utils``: atomic writes, distributed helpers, timing, user-facing errors
- ``config``: the typed configuration of a run, built from the command line

Lower stages never import upper ones (``utils`` < ``data``, ``model`` < ``losses`` < ``estep`` < ``run`` <
``train`` < ``eval``). The official code's E-step, kept as a reference for tests and benchmarks, is
``tools/reference.py``.
"""

__version__ = "0.1.0"
