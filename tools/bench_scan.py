"""Speed of the data resolver on a synthetic tree of empty image files: files resolved per second.

    python tools/bench_scan.py --files 200000 --classes 1000          # class folders (ImageNet-like)
    python tools/bench_scan.py --files 200000 --classes 0             # one flat unlabeled folder
    python tools/bench_scan.py --root /data/imagenet                  # an existing data set (nothing written)

The tree (``--classes`` folders of empty ``.JPEG`` files, in a temporary folder unless ``--keep DIR``) is
written first and deleted afterwards; the timing covers ``pcl.data.sources.resolve_data`` only: the scan, the
labels and the data identity (the file-list hash). Run it twice: the first pass may read directory blocks from
disk, the second from the page cache (``--repeat``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pcl.data.sources import resolve_data
from pcl.utils.cli import ErrorParser, entry_point, folder_arg
from pcl.utils.flags import ranged


def make_tree(root: Path, files: int, classes: int) -> None:
    """``files`` empty ``.JPEG`` files spread over ``classes`` class folders (0: all directly in ``root``)."""
    root.mkdir(parents=True, exist_ok=True)
    folders = [root / f"n{c:08d}" for c in range(classes)] or [root]
    for d in folders:
        d.mkdir(exist_ok=True)
    for i in range(files):
        (folders[i % len(folders)] / f"img_{i:08d}.JPEG").touch()


def measure(root: Path, labels: str, repeat: int) -> list[dict]:
    """One record per pass: images, classes, seconds of ``resolve_data`` + identity, files per second."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        source = resolve_data(str(root), labels)
        identity = source.identity()
        s = time.perf_counter() - t0
        n = identity["count"]
        out.append(
            {"images": n, "classes": len(source.train.classes), "seconds": round(s, 3), "files_per_s": round(n / s)}
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=ranged(int, gt=0), default=200_000, help="empty files to create")
    p.add_argument("--classes", type=ranged(int, ge=0), default=1000, help="class folders (0: one flat folder)")
    p.add_argument("--root", type=Path, help="time an existing data folder instead (nothing is written)")
    p.add_argument("--keep", type=Path, help="write the tree here and keep it (default: a temporary folder)")
    p.add_argument("--labels", default="auto", choices=("auto", "none", "folders"))
    p.add_argument("--repeat", type=ranged(int, gt=0), default=2)
    return p


@entry_point()
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    folder_arg(a.keep, "--keep")
    tmp = None
    try:
        root = a.root
        if root is None:
            root = a.keep or Path(tempfile.mkdtemp(prefix="pcl-bench-scan-")) / "tree"
            tmp = None if a.keep else root.parent
            t0 = time.perf_counter()
            make_tree(root, a.files, a.classes)
            print(
                f"wrote {a.files:,} empty files in {max(a.classes, 1)} folders in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        for rec in measure(root, a.labels, a.repeat):
            print(json.dumps(rec))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
