"""Weighted kNN top-1 (k=200, tau=0.1) of a PCL checkpoint's query backbone, an exported or an untrained one.

    python tools/knn_eval.py --checkpoint runs/default/checkpoints/last.pth      # trained
    python tools/knn_eval.py --untrained --arch resnet18                        # same net, random init
    python tools/knn_eval.py --exported backbone.pth                            # tools/export_backbone.py
    python tools/knn_eval.py DATA --checkpoint ...                              # another ImageFolder root

Uses the checkpoint's architecture flags (arch, stem, image size) when given one. The features are those
of the linear probe (``tools/linear_eval.py``), L2-normalised.
"""

from __future__ import annotations

import argparse
import sys

from pcl.eval.evaluation import frozen_features, knn_accuracy, resolve_device
from pcl.eval.pretrained import add_data_args, add_source_args, load_source
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.flags import ranged


@entry_point()
def main(argv: list[str] | None = None) -> int:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    add_source_args(p)
    p.add_argument("--knn-k", type=ranged(int, gt=0), default=200)
    p.add_argument("--knn-t", type=ranged(float, gt=0), default=0.1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("-j", "--workers", type=ranged(int, ge=0, le=1024), default=2)
    p.add_argument("--batch-size", type=ranged(int, gt=0), default=256)
    a = p.parse_args(argv)
    pre = load_source(a)
    feats = frozen_features(pre, a.data, resolve_device(a.device), a.batch_size, a.workers, labels=a.labels, val=a.val)
    acc = knn_accuracy(feats, a.knn_k, a.knn_t)
    print(f"kNN top-1 {acc:.2f}% ({pre.source}, {pre.arch}, stem {pre.stem}, k={a.knn_k}, t={a.knn_t})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
