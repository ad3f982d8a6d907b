"""The configuration of one evaluation: the settings every protocol shares, and the chosen protocols' settings.

The common fields declare their flags once (``tools/evaluate.py`` adds them); each chosen protocol's settings are
its own dataclass (``pcl.eval.registry.Protocol.settings``), keyed by protocol name in ``protocols``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcl.data.sources import LABEL_MODES
from pcl.eval.registry import PROTOCOLS, check_settings, default_protocols
from pcl.utils.errors import PCLError
from pcl.utils.flags import check_fields, flag

ENCODERS = ("query", "key", "untrained")  # which backbone of a checkpoint to measure
DEVICES = ("auto", "cpu", "cuda")
UNTRAINED_BN = ("recalibrated", "init")  # the untrained encoder's BatchNorm statistics
REFERENCES = ("auto", "none")  # or the path of an eval.json of the untrained reference


@dataclass(frozen=True)
class EvalConfig:
    """Common settings of an evaluation and ``protocols``: chosen protocol name -> its settings (registry order).

    ``data`` None: the run's own data (its stored configuration), or the bundled subset for a backbone without a
    run; ``labels`` / ``val`` None: the run's own (or ``auto`` / DATA's own split). ``seed`` seeds every protocol
    (its draws, restarts and the untrained encoder); ``out`` None: ``RUN_DIR/eval.json`` when the evaluation is
    the run's own, else not written. ``untrained_bn`` / ``recalibrate_bn`` / ``bn_images``: BatchNorm statistics
    recomputed on the train images (``pcl.eval.pretrained.recalibrated``); ``reference``: where the untrained
    reference of a trained encoder comes from (``pcl.eval.reference``).
    """

    data: str | None = flag(None, help="images, any form main_pcl.py takes (default: the run's own data)")
    labels: str | None = flag(None, choices=LABEL_MODES, help="where labels come from, as main_pcl.py's")
    val: str | None = flag(None, help="labelled test set, any DATA form (default: the run's, or DATA's val/ or test/)")
    out: Path | None = flag(None, type=Path, help="where to write the JSON (default RUN_DIR/eval.json)")
    device: str = flag("auto", choices=DEVICES)
    encoder: str = flag("query", choices=ENCODERS, help="which backbone of a run to measure (default query)")
    seed: int = flag(0, ge=0, le=2**31 - 1, help="seeds every protocol and the untrained encoder")
    untrained_bn: str = flag(
        "recalibrated",
        choices=UNTRAINED_BN,
        help="the untrained encoder's BatchNorm statistics: recalibrated on the eval view of the train images "
        "(forward passes, no labels: the fair reference) or init (mean 0, variance 1)",
    )
    recalibrate_bn: bool = flag(
        False,
        action="store_true",
        help="recompute any encoder's BatchNorm statistics on the eval view of the train images before measuring it",
    )
    bn_images: int = flag(10_000, gt=0, help="images of a BatchNorm recalibration (a seeded subset when more)")
    reference: str = flag(
        "auto",
        help="the untrained reference a trained encoder is compared with: auto (RUN_DIR/eval_untrained.json when "
        "it was measured with the same settings, else measured now), none, or an eval.json file",
    )
    batch_size: int = flag(256, "--eval-batch-size", gt=0, help="batch of the feature extraction")
    workers: int = flag(2, "-j", "--workers", ge=0, le=1024)
    cache_dir: Path | None = flag(None, "--feature-cache", type=Path, help="keep extracted features here, reuse them")
    show: bool = True  # progress bars
    protocols: dict[str, Any] = field(default_factory=default_protocols)

    def validate(self) -> None:
        """One-line ``PCLError`` for a value outside its flag's range or an unknown protocol."""
        check_fields(self)
        if self.reference not in REFERENCES and not Path(self.reference).is_file():
            raise PCLError(f"--reference must be auto, none or an eval.json file; {self.reference} is not a file")
        for name, settings in self.protocols.items():
            protocol = PROTOCOLS.get(name)
            if protocol is None:
                raise PCLError(f"unknown protocol {name}; choose from {','.join(PROTOCOLS)}")
            if not isinstance(settings, protocol.settings):
                raise PCLError(f"protocol {name}: settings must be a {protocol.settings.__name__}")
            check_settings(settings)
