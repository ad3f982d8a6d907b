"""Rebuild a suite's results table and plots from its run folders (the runner calls the same code).

python experiments/summarize.py runs/experiments/baseline [--dest experiments/results/baseline]
"""

from __future__ import annotations

import sys
from pathlib import Path

from summary import summarize

from pcl.utils.cli import ErrorParser, report_error
from pcl.utils.errors import PCLError


def main(argv: list[str] | None = None) -> int:
    p = ErrorParser(description="Write results.md, results.csv and curve PNGs of a suite's runs.")
    p.add_argument("suite_dir", type=Path, help="OUT/SUITE folder written by experiments/run.py")
    p.add_argument("--dest", type=Path, default=None, help="where to write (default: suite_dir)")
    p.add_argument("--metric", default="knn", help="sweep plots: knn, linear, ami, acc_proto_final or acc_proto_best")
    try:
        args = p.parse_args(argv)
        md = summarize(args.suite_dir, args.dest, metric=args.metric)
    except PCLError as e:
        return report_error(e)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
