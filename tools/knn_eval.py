"""Weighted kNN top-1 (k=200, tau=0.1) of a PCL checkpoint's query backbone, or of an untrained encoder.

    python tools/knn_eval.py --checkpoint runs/default/checkpoints/last.pth      # trained
    python tools/knn_eval.py --untrained --arch resnet18                        # same net, random init
    python tools/knn_eval.py DATA --checkpoint ...                              # another ImageFolder root

Uses the checkpoint's architecture flags (arch, stem, low-dim, heads, image size) when given one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pcl.checkpoint import load_checkpoint
from pcl.config import stored_config
from pcl.data import IndexedImageFolder, eval_loader, eval_transform, resolve_splits
from pcl.errors import PCLError
from pcl.knn import extract, knn_top1
from pcl.model import PCL, ModelConfig


def evaluate(model: PCL, data: str | None, image_size: int, k: int, t: float, workers: int, batch: int) -> float:
    """kNN top-1 (%) of ``model``'s query backbone: train split as the bank, val/test split as queries."""
    splits = resolve_splits(data)
    if splits.eval is None:
        raise PCLError(f"{splits.train.parent} has no val/ or test/ split to evaluate on")
    tf = eval_transform(image_size)
    train, test = IndexedImageFolder(splits.train, tf), IndexedImageFolder(splits.eval, tf)
    model.eval()
    bank = extract(model.backbone_features, eval_loader(train, batch, workers), torch.device("cpu"), desc="bank")
    query = extract(model.backbone_features, eval_loader(test, batch, workers), torch.device("cpu"), desc="eval")
    return knn_top1(bank, torch.tensor(train.targets), query, torch.tensor(test.targets), len(train.classes), k, t)


def main() -> int:
    """Print the kNN top-1 of a checkpoint or an untrained encoder; 2 with one ``error:`` line on bad input."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="ImageFolder root (default: bundled CIFAR-10 subset)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path)
    src.add_argument("--untrained", action="store_true", help="random initialisation (seeded)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="imagenet", choices=("imagenet", "small"))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--knn-t", type=float, default=0.1)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    a = p.parse_args()
    try:
        torch.manual_seed(a.seed)
        if a.checkpoint is not None:
            ckpt = load_checkpoint(a.checkpoint)
            cfg = stored_config(ckpt, a.checkpoint)
            a.arch, a.stem, a.image_size = cfg.model.arch, cfg.model.stem, cfg.data.aug.image_size
            model = PCL.from_config(cfg.model, bn_splits=1)
            model.load_state_dict(ckpt["model"])
            what = f"{a.checkpoint} (epoch {ckpt['epoch']})"
        else:
            model = PCL.from_config(ModelConfig(arch=a.arch, stem=a.stem, pcl_r=16), bn_splits=1)
            what = f"untrained {a.arch} (seed {a.seed})"
        acc = evaluate(model, a.data, a.image_size, a.knn_k, a.knn_t, a.workers, a.batch_size)
    except PCLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"kNN top-1 {acc:.2f}% ({what}, {a.arch}, stem {a.stem}, k={a.knn_k}, t={a.knn_t})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
