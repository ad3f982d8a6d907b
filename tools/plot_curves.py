"""Plot per-epoch curves of any set of runs (one line per EXP_DIR; a folder of seed*/ runs is one line with its
seed mean and the min-max range shaded).

    python tools/plot_curves.py runs/a runs/b --tags epoch/acc_inst,eval/knn_top1 --out curves.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from pcl.run.curves import plot_curves, seed_dirs
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError


@entry_point()
def main(argv: list[str] | None = None) -> int:
    p = ErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exp_dirs", type=Path, nargs="+", help="run folders (with metrics.json or tb/)")
    p.add_argument("--tags", default="epoch/acc_inst,eval/knn_top1", help="comma list of per-epoch tags")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG (a tag suffix is added for several)")
    p.add_argument("--labels", default=None, help="comma list of legend labels (default: folder names)")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [d.name for d in args.exp_dirs]
    if len(labels) != len(args.exp_dirs):
        raise PCLError(f"--labels has {len(labels)} names for {len(args.exp_dirs)} folders")
    for d in args.exp_dirs:
        if not d.is_dir():
            raise PCLError(f"{d} is not a folder")
    groups = {label: seed_dirs(d) for label, d in zip(labels, args.exp_dirs, strict=True)}
    tags = [t for t in args.tags.split(",") if t]
    for path in plot_curves(groups, tags, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
