"""Linear probe of a PCL checkpoint's frozen query backbone, an exported backbone or an untrained encoder.

    python tools/linear_eval.py --checkpoint runs/default/checkpoints/last.pth          # features protocol
    python tools/linear_eval.py --untrained --arch resnet18                            # same net, random init
    python tools/linear_eval.py --exported backbone.pth --arch resnet18                # tools/export_backbone.py
    python tools/linear_eval.py DATA --checkpoint CKPT --protocol official --lr 5      # PCL v2 recipe (GPU)

Protocols:
  features (default, fast): frozen features of the center-cropped train and test images are extracted once
      (``--feature-cache DIR`` keeps them on disk), then a multinomial logistic regression is trained on
      them by full-batch L-BFGS (on the GPU when there is one); the L2 strength is picked from ``--wd-grid``
      on a held-out ``--val-fraction`` of the training set, then refitted on all of it.
  official: the MoCo / PCL ``eval_cls_imagenet.py`` recipe: a linear layer on the frozen backbone (BN in
      eval mode) trained on RandomResizedCrop + flip views by SGD, lr 5 (PCL v2; MoCo: 30), momentum 0.9,
      weight decay 0, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80. Slow: meant for a GPU.

A checkpoint's own architecture flags (arch, stem, image size) are used; ``--arch``/``--stem``/``--image-size``
apply to ``--untrained`` and ``--exported`` (the stem of an exported backbone is read from its conv1).
Prints ``linear top-1: X%`` and ``linear top-5: Y%``; ``--out FILE.json`` writes them with the settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pcl.eval.evaluation import frozen_features, linear_features, linear_official, resolve_device
from pcl.eval.linear_official import OfficialConfig
from pcl.eval.linear_probe import DEFAULT_WDS
from pcl.eval.pretrained import add_data_args, add_source_args, load_source
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    add_source_args(p)
    p.add_argument("--protocol", default="features", choices=("features", "official"))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("-j", "--workers", type=ranged(int, ge=0, le=1024), default=2)
    p.add_argument("--out", type=Path, help="write the result and settings as JSON")
    g = p.add_argument_group("features protocol")
    g.add_argument("--wd-grid", type=_floats, default=DEFAULT_WDS, help="L2 strengths to choose from (comma list)")
    g.add_argument(
        "--val-fraction",
        type=ranged(float, gt=0, lt=1),
        default=0.2,
        help="held-out share of the train set for the choice",
    )
    g.add_argument("--max-iter", type=ranged(int, gt=0), default=200, help="L-BFGS iterations per fit")
    g.add_argument("--eval-batch-size", type=ranged(int, gt=0), default=256, help="batch of the feature extraction")
    g.add_argument("--feature-cache", type=Path, help="keep extracted features in this folder and reuse them")
    g = p.add_argument_group("official protocol (flags of eval_cls_imagenet.py)")
    d = OfficialConfig()
    g.add_argument("--epochs", type=ranged(int, gt=0), default=d.epochs)
    g.add_argument("-b", "--batch-size", type=ranged(int, gt=0), default=d.batch_size)
    g.add_argument("--lr", "--learning-rate", type=ranged(float, gt=0), default=d.lr, help="5 for PCL v2, 30 for MoCo")
    g.add_argument("--schedule", type=ranged(int, ge=0), nargs="*", default=d.schedule, help="lr x0.1 at these epochs")
    g.add_argument("--momentum", type=ranged(float, ge=0, lt=1), default=d.momentum)
    g.add_argument("--wd", "--weight-decay", type=ranged(float, ge=0), default=d.weight_decay)
    return p


def run(argv: list[str] | None = None) -> dict:
    """Parse, evaluate, print; returns the JSON-ready result."""
    a = build_parser().parse_args(argv)
    if not 0.0 < a.val_fraction < 1.0:
        raise PCLError(f"--val-fraction must be in (0, 1), got {a.val_fraction}")
    if not a.wd_grid or min(a.wd_grid) < 0:
        raise PCLError("--wd-grid needs at least one non-negative value")
    for flag, v in {"--epochs": a.epochs, "--batch-size": a.batch_size, "--max-iter": a.max_iter}.items():
        if v <= 0:
            raise PCLError(f"{flag} must be positive, got {v}")
    pre = load_source(a)
    dev = resolve_device(a.device)
    settings: dict = {**pre.settings(), "data": a.data, "val": a.val, "device": str(dev), "protocol": a.protocol}
    if a.protocol == "features":
        feats = frozen_features(
            pre, a.data, dev, a.eval_batch_size, a.workers, a.feature_cache, labels=a.labels, val=a.val
        )
        res = linear_features(feats, a.wd_grid, a.val_fraction, a.seed, a.max_iter)
        settings.update(
            wd_grid=list(a.wd_grid),
            wd=res.wd,
            val_fraction=a.val_fraction,
            val_top1={str(k): v for k, v in res.val_top1.items()},
            max_iter=a.max_iter,
            seed=a.seed,
        )
    else:
        cfg = OfficialConfig(a.epochs, a.batch_size, a.lr, a.momentum, a.wd, list(a.schedule))
        res = linear_official(pre, a.data, cfg, dev, a.workers, a.seed, labels=a.labels, val=a.val)
        settings.update(vars(cfg), seed=a.seed)
    out = {"linear_top1": res.top1, "linear_top5": res.top5, "settings": settings}
    print(f"linear top-1: {res.top1:.2f}%")
    print(f"linear top-5: {res.top5:.2f}%")
    detail = f" (chosen wd {res.wd:g})" if a.protocol == "features" else ""
    print(f"{pre.source}, {pre.arch}, stem {pre.stem}, {a.protocol} protocol{detail}")
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {a.out}")
    return out


@entry_point()
def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
