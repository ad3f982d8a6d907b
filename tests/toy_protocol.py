"""A test-only evaluation protocol, written as a new protocol module would be: one file, one registration.

``toy``: the mean L2 norm of the frozen train features, times ``--toy-scale``. Importing this module registers it
(the ``toy_protocol`` fixture of ``tests/conftest.py`` imports it and removes it again after the test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pcl.eval.context import EvalContext
from pcl.eval.protocols import register_protocol
from pcl.eval.registry import Block, Protocol, Rows, SummaryColumn, figure
from pcl.utils.flags import flag


@dataclass(frozen=True)
class ToySettings:
    """The one setting of the toy protocol."""

    scale: float = flag(1.0, "--toy-scale", gt=0, help="multiplies the figure")


def compute(ctx: EvalContext, s: ToySettings) -> Block:
    """``scale`` x the mean norm of the raw frozen train features ``(N, D)``."""
    value = s.scale * float(ctx.features.train.norm(dim=1).mean())
    return Block({"toy": {"mean_norm": value}}, {"toy": {"scale": s.scale, "features": ctx.feature_note}})


def rows(result: Mapping[str, Any]) -> Rows:
    block = result.get("toy")
    return [] if not block else [("toy mean feature norm", f"{block['mean_norm']:.4f}")]


PROTOCOL = register_protocol(
    Protocol(
        name="toy",
        help="mean norm of the frozen train features (test-only)",
        settings=ToySettings,
        compute=compute,
        rows=rows,
        columns=(SummaryColumn("toy_norm", "toy mean norm", lambda e: figure(e, "toy", "mean_norm"), digits=3),),
    )
)
