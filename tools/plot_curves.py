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
            what = "does not exist" if not d.exists() else "is a file"
            raise PCLError(f"{d} {what}: give run folders (each with metrics.json or tb/), e.g. runs/default")
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    if not tags:
        raise PCLError(f"--tags names no tag (got {args.tags!r}); give a comma list, e.g. epoch/acc_inst,eval/knn_top1")
    if args.out.is_dir():
        raise PCLError(f"--out {args.out} is a folder: give the PNG file to write, e.g. {args.out / 'curves.png'}")
    groups = {label: seed_dirs(d) for label, d in zip(labels, args.exp_dirs, strict=True)}
    for path in plot_curves(groups, tags, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
