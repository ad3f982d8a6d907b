"""``python -m pcl ARGS`` runs the training program, as ``main_pcl.py ARGS`` does."""

import sys

from pcl.cli import main

sys.exit(main())
