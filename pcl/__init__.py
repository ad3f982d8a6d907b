"""Prototypical Contrastive Learning (PCL): one module per stage of the EM loop.

- ``config``: command line -> typed ``Config``, validation   - ``data``: datasets, transforms, loaders
- ``backbone`` / ``heads`` / ``model``: ResNets, projection heads, the builder (queue, momentum update)
- ``losses``: InfoNCE and ProtoNCE              - ``feature_store``: disk shards of E-step features
- ``clustering``: faiss k-means, streamed assignment, concentrations
- ``estep``: the per-epoch E-step               - ``optim``: optimizers and per-step schedules
- ``engine``: the EM loop                       - ``meters`` / ``amp``: step and epoch meters; autocast
- ``run_dir``: paths of an experiment directory - ``knn``: kNN monitor
- ``checkpoint``: finite-only save / exact resume - ``atomic``: temp-file + rename writes
- ``tb``: TensorBoard logging                   - ``distributed``: torchrun / DDP helpers

The official code's E-step, kept as a reference for tests and benchmarks, is ``tools/reference.py``.
"""

__version__ = "0.1.0"
