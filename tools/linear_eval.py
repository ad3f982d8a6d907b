"""Linear probe only: an alias of ``tools/evaluate.py --protocols linear`` (the same command line and output).

    python tools/linear_eval.py runs/default/checkpoints/last.pth              # features protocol
    python tools/linear_eval.py --untrained --arch resnet18                     # the same net, random init
    python tools/linear_eval.py --exported backbone.pth --data DATA             # tools/export_backbone.py's backbone
    python tools/linear_eval.py CKPT --linear-protocol official --linear-lr 5   # PCL v2 recipe (GPU)
"""

from __future__ import annotations

import sys

import evaluate  # tools/evaluate.py, beside this file


def main(argv: list[str] | None = None) -> int:
    return evaluate.main(argv, protocols=("linear",))


if __name__ == "__main__":
    sys.exit(main())
