"""Export the trained query backbone of a training checkpoint (any ``--method``: MoCo / PCL's query encoder, SwAV's
encoder, DINO's student) as a plain torchvision ResNet ``state_dict``.

    python tools/export_backbone.py runs/default/checkpoints/last.pth backbone.pth

Load it with ``resnet.load_state_dict(sd, strict=False)``: only ``fc.*`` is missing (PCL trains no
classifier). For a ``--stem small`` run, build the ResNet with the same stem first (the script prints how).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pcl.config import stored_config
from pcl.eval.pretrained import backbone_prefixes, backbone_state_dict
from pcl.run.checkpoint import load_checkpoint
from pcl.utils.atomic import write_atomic
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError


@entry_point()
def main() -> int:
    """Write the backbone ``state_dict`` (atomically); 2 with one ``error:`` line for a file that is no PCL
    checkpoint or an output path that cannot be written."""
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output", type=Path)
    a = p.parse_args()
    if a.output.is_dir():
        raise PCLError(f"output {a.output} is a folder: give the file to write, e.g. {a.output / 'backbone.pth'}")
    ckpt = load_checkpoint(a.checkpoint)
    model_cfg = stored_config(ckpt, a.checkpoint).model
    if not isinstance(ckpt.get("model"), dict):
        raise PCLError(f"{a.checkpoint} holds no model state: give a training checkpoint (RUN/checkpoints/last.pth)")
    sd = backbone_state_dict(ckpt)
    if not sd:
        prefix = backbone_prefixes(ckpt)["query"]
        raise PCLError(f"{a.checkpoint} holds no query-encoder backbone (no {prefix}* tensors)")
    try:
        a.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PCLError(f"cannot create the folder of {a.output}: {e.strerror or e}") from None
    write_atomic(a.output, lambda f: torch.save(sd, f), "backbone")
    arch, stem = model_cfg.arch, model_cfg.stem
    print(f"wrote {a.output}: {len(sd)} tensors of a torchvision {arch} (epoch {ckpt['epoch']})")
    print(f"load: m = torchvision.models.{arch}(); ", end="")
    if stem == "small":
        print("m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity(); ", end="")
    print(f"m.load_state_dict(torch.load('{a.output}'), strict=False)  # missing: fc.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
