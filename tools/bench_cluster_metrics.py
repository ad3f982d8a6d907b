"""Cost of the per-E-step cluster metrics (NMI, AMI, purity) at a given N, on synthetic assignments.

    python tools/bench_cluster_metrics.py --n 50000 --k 1000,2000 --classes 10 [--epoch-seconds S]

Assignments: each class is spread over its own k/classes clusters, 30 % of the samples re-assigned at random
(AMI ~0.25, a realistic mid-training value). Prints the seconds per granularity (best of ``--repeat``) and,
with ``--epoch-seconds``, their sum as a share of that epoch time.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from pcl.analysis.cluster_metrics import label_scores
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.flags import ranged


def synthetic(n: int, k: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(im2cluster (n,), labels (n,))``: per-class blocks of clusters, 30 % noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    per = max(1, k // classes)
    a = (labels * per + rng.integers(0, per, n)) % k
    return np.where(rng.random(n) < 0.3, rng.integers(0, k, n), a), labels


@entry_point()
def main() -> int:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=ranged(int, gt=0), default=50_000)
    p.add_argument("--k", default="1000,2000", help="granularities, comma list")
    p.add_argument("--classes", type=ranged(int, gt=0), default=10)
    p.add_argument("--repeat", type=ranged(int, gt=0), default=3)
    p.add_argument("--epoch-seconds", type=ranged(float, gt=0), default=None, help="epoch time to compare with")
    a = p.parse_args()
    total = 0.0
    for k in (int(x) for x in a.k.split(",")):
        im2cluster, labels = synthetic(a.n, k, a.classes)
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            s = label_scores(im2cluster, labels)
            times.append(time.perf_counter() - t0)
        total += min(times)
        print(f"N={a.n} k={k} classes={a.classes}: {min(times):.3f} s (NMI {s['nmi']:.3f}, AMI {s['ami']:.3f})")
    line = f"all granularities: {total:.3f} s"
    if a.epoch_seconds:
        line += f" = {100 * total / a.epoch_seconds:.2f} % of a {a.epoch_seconds:g} s epoch"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
