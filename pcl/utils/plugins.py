"""Plug-ins: modules of your own that register methods, protocols, backbones or view recipes, imported by name
from the ``PCL_PLUGINS`` environment variable (a comma list, e.g. ``PCL_PLUGINS=mylab.methods``), so that a new
method trains through ``main_pcl.py``, the suite runner and SLURM without editing the package."""

from __future__ import annotations

import importlib
import os

from pcl.utils.errors import PCLError

ENV = "PCL_PLUGINS"


def import_plugins() -> list[str]:
    """Import every module named in ``$PCL_PLUGINS`` (once; later calls are no-ops); returns their names. A module
    that cannot be imported is one ``PCLError`` line naming it."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # any failure of a user's module is its own line, not a traceback
            raise PCLError(f"{ENV}: cannot import {name!r}: {type(e).__name__}: {e}") from None
    return names
