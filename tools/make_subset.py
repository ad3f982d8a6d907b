"""Build the bundled CIFAR-10 subset (class-balanced JPEGs in ImageFolder layout) from the full archive.

Usage:
    python tools/make_subset.py --src ../shared/data/cifar10-jpg.tar.gz \
        --train-per-class 500 --test-per-class 100 --out data/cifar10_subset.tar.gz

The first ``N`` files per class (sorted by name) are taken, so the subset is deterministic.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import BinaryIO

from pcl.utils.atomic import write_atomic
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged


def _chosen(tar: tarfile.TarFile, src: Path, per_split: dict[str, int]) -> dict[tuple[str, str], list[tarfile.TarInfo]]:
    """The first ``per_split[split]`` members per ``(split, class)`` of ``cifar10/<split>/<class>/<file>``."""
    chosen: dict[tuple[str, str], list[tarfile.TarInfo]] = defaultdict(list)
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
    for m in members:
        parts = Path(m.name).parts  # cifar10/<split>/<class>/<file>
        if len(parts) != 4 or parts[1] not in per_split:
            continue
        key = (parts[1], parts[2])
        if len(chosen[key]) < per_split[parts[1]]:
            chosen[key].append(m)
    if not chosen:
        raise PCLError(f"--src {src} holds no ROOT/<split>/<class>/<image> files of the splits {', '.join(per_split)}")
    return chosen


def build_subset(src: Path, out: Path, per_split: dict[str, int], name: str = "cifar10_subset") -> dict[str, int]:
    """Copy ``per_split[split]`` images per class of each split into a new ``.tar.gz`` (written atomically);
    returns counts. A ``src`` that is no ``.tar.gz`` archive, or an ``out`` that cannot be written, is one
    ``PCLError`` line."""
    if not src.is_file():
        raise PCLError(f"--src {src} {'is a folder' if src.is_dir() else 'does not exist'}: give the .tar.gz archive")
    if out.is_dir():
        raise PCLError(f"--out {out} is a folder: give the .tar.gz file to write")
    counts: dict[str, int] = defaultdict(int)
    try:
        with tarfile.open(src, "r:gz") as tar:
            chosen = _chosen(tar, src, per_split)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PCLError(f"cannot create the folder of --out {out}: {e.strerror or e}") from None

            def write(f: BinaryIO) -> None:
                with tarfile.open(fileobj=f, mode="w:gz", compresslevel=9) as dst:
                    for (split, cls), items in sorted(chosen.items()):
                        for m in items:
                            data = tar.extractfile(m).read()
                            info = tarfile.TarInfo(f"{name}/{split}/{cls}/{Path(m.name).name}")
                            info.size, info.mode, info.mtime = len(data), 0o644, 0
                            dst.addfile(info, io.BytesIO(data))
                            counts[split] += 1

            write_atomic(out, write, "subset archive")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PCLError(f"--src {src} is not a readable .tar.gz archive: {e}") from None
    return dict(counts)


@entry_point()
def main() -> int:
    """Write the class-balanced subset archive from the full CIFAR-10 JPEG archive."""
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=Path("../shared/data/cifar10-jpg.tar.gz"))
    p.add_argument("--out", type=Path, default=Path("data/cifar10_subset.tar.gz"))
    p.add_argument("--train-per-class", type=ranged(int, gt=0), default=500)
    p.add_argument("--test-per-class", type=ranged(int, gt=0), default=100)
    a = p.parse_args()
    counts = build_subset(a.src, a.out, {"train": a.train_per_class, "test": a.test_per_class})
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
