"""The objective's settings: InfoNCE's temperature, when ProtoNCE starts, its weight and the choice of phi."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pcl.utils.flags import check_fields, flag


@dataclass
class LossConfig:
    """``--temperature``, ``--warmup-epochs``, ``--proto-weight``, ``--fixed-concentration``.

    ``loss = InfoNCE / temperature + proto_weight x mean ProtoNCE`` from epoch ``warmup_epochs`` on (InfoNCE only
    before: MoCo v2). The number of negatives (instance and prototype) is the queue size ``--pcl-r`` of the model;
    the granularities of the prototypes are the E-step's ``--num-cluster``.
    """

    GROUP: ClassVar[str] = "PCL E-step"

    temperature: float = flag(0.2, gt=0, group="model", help="InfoNCE temperature T (also mean of phi)")
    warmup_epochs: int = flag(
        20, ge=0, help="InfoNCE-only epochs before the first E-step (>= --epochs: MoCo v2, no E-step)"
    )
    proto_weight: float = flag(1.0, ge=0, help="weight of the ProtoNCE term")  # loss = InfoNCE + w * mean ProtoNCE
    fixed_concentration: bool = flag(
        False,
        action="store_true",
        help="ablation: phi = --temperature for every prototype instead of the estimated concentration",
    )

    def validate(self) -> None:
        """Raise a one-line ``PCLError`` for a value outside its flag's range."""
        check_fields(self)
