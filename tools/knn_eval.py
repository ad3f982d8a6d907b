"""kNN top-1 only: an alias of ``tools/evaluate.py --protocols knn`` (the same command line, flags and output).

    python tools/knn_eval.py runs/default/checkpoints/last.pth       # a checkpoint (or its run directory)
    python tools/knn_eval.py --untrained --arch resnet18              # the same net, random init
    python tools/knn_eval.py --exported backbone.pth --data DATA      # tools/export_backbone.py's backbone
"""

from __future__ import annotations

import sys

import evaluate  # tools/evaluate.py, beside this file


def main(argv: list[str] | None = None) -> int:
    return evaluate.main(argv, protocols=("knn",))


if __name__ == "__main__":
    sys.exit(main())
