"""The built-in evaluation protocols, one module each; importing this package registers them.

The order of the imports below is the registry's order: the order of ``tools/evaluate.py``'s table rows and of
the suite summaries' columns. A new protocol: one module here that calls ``register_protocol``, and its import.
"""

from pcl.eval.protocols import knn, linear, clusters, lowshot, finetune, kmeans  # noqa: F401, I001 - registers them
from pcl.eval.registry import PROTOCOLS, Protocol, register_protocol

__all__ = ["PROTOCOLS", "Protocol", "register_protocol"]
