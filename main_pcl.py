"""Train PCL (the logic is :mod:`pcl.cli`).

python main_pcl.py                                   # bundled CIFAR-10 subset, CPU-friendly defaults
python main_pcl.py DATA --epochs 200 --warmup-epochs 20 --optimizer sgd-cos
torchrun --nproc_per_node 8 main_pcl.py DATA ...     # DDP (docs/distributed.md)
"""

import sys

from pcl.cli import main

if __name__ == "__main__":
    sys.exit(main())
