"""Write an image set built to be hard for the instance task (``pcl.data.synthetic``), for collapse checks and the
recipe search of ``experiments/suites/recipes.toml``.

Usage:
    python tools/make_synthetic.py OUT --kind low-detail --classes 10 --train-per-class 100 --test-per-class 20
    python tools/make_synthetic.py OUT --kind near-duplicates --train-per-class 500

``low-detail`` writes ``OUT/train/classC`` and ``OUT/test/classC`` (labelled: a flat colour per class, a faint
blob per image); ``near-duplicates`` writes ``OUT/train`` unlabeled (``--classes`` and ``--test-per-class`` unused).
``OUT`` must not exist yet or be empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pcl.data.synthetic import PALETTE, write_low_detail, write_near_duplicates
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged


@entry_point()
def main() -> int:
    """Write the set and print where it went."""
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--kind", choices=("low-detail", "near-duplicates"), default="low-detail")
    p.add_argument("--classes", type=ranged(int, ge=1, le=len(PALETTE)), default=10)
    p.add_argument("--train-per-class", type=ranged(int, gt=0), default=100)
    p.add_argument("--test-per-class", type=ranged(int, gt=0), default=20)
    p.add_argument("--size", type=ranged(int, ge=8), default=32, help="image side in pixels")
    p.add_argument("--seed", type=ranged(int, ge=0), default=0)
    p.add_argument("--detail", type=ranged(float, gt=0, le=255), default=30.0,
                   help="low-detail: the blob's largest tint (of 255), all that tells two images of a class apart")
    a = p.parse_args()
    if a.out.exists() and (not a.out.is_dir() or any(a.out.iterdir())):
        raise PCLError(f"{a.out} exists and is {'not empty' if a.out.is_dir() else 'a file'}: give a new folder")
    if a.kind == "low-detail":
        write_low_detail(a.out / "train", a.train_per_class, a.classes, a.size, a.seed, a.detail)
        write_low_detail(a.out / "test", a.test_per_class, a.classes, a.size, a.seed + 1, a.detail)
        print(f"wrote {a.out}: {a.classes} classes, {a.train_per_class} train and {a.test_per_class} test per class")
    else:
        write_near_duplicates(a.out / "train", a.train_per_class, a.size, a.seed)
        print(f"wrote {a.out}/train: {a.train_per_class} near-duplicate images (unlabeled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
