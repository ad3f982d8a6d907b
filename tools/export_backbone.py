"""Export the trained query backbone of a training checkpoint (any ``--method``: MoCo / PCL's query encoder, SwAV's
encoder, DINO's student) for the library its architecture comes from.

    python tools/export_backbone.py runs/default/checkpoints/last.pth backbone.pth          # torchvision ResNet
    python tools/export_backbone.py runs/vit/checkpoints/last.pth backbone.safetensors      # timm model

The file holds the backbone's ``state_dict`` under the library's own names: a torchvision ResNet's (without
``fc.*``, which PCL does not train) or a timm model's built with ``num_classes=0``. ``.safetensors`` writes
safetensors (with the architecture in its metadata, which ``tools/evaluate.py --exported`` reads), any other
suffix ``torch.save``. The script prints the lines that load it: ``torchvision.models.<arch>()`` (+ the small stem
of a ``--stem small`` run) and ``load_state_dict(..., strict=False)``, or ``timm.create_model(name,
pretrained=False, num_classes=0, ...)`` and ``load_state_dict(...)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pcl.config import stored_config
from pcl.eval.pretrained import backbone_prefixes, backbone_state_dict
from pcl.model.backbone import ARCHS, BackboneSpec
from pcl.model.timm_backbone import create_kwargs, timm_name
from pcl.run.checkpoint import load_checkpoint
from pcl.utils.atomic import write_atomic
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError


def recipe(spec: BackboneSpec, output: Path) -> str:
    """The Python lines that build a fresh model of ``spec`` with the user's library and load ``output`` into it."""
    load = (
        f"safetensors.torch.load_file('{output}')" if output.suffix == ".safetensors" else f"torch.load('{output}')"
    )
    if spec.arch in ARCHS:
        stem = "m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = torch.nn.Identity(); "
        return (
            f"m = torchvision.models.{spec.arch}(); {stem if spec.stem == 'small' else ''}"
            f"m.load_state_dict({load}, strict=False)  # missing: fc.*"
        )
    kwargs = "".join(f", {k}={v!r}" for k, v in create_kwargs(spec).items())
    return (
        f"m = timm.create_model('{timm_name(spec.arch)}', pretrained=False, num_classes=0{kwargs}); "
        f"m.load_state_dict({load})"
    )


def write(sd: dict[str, torch.Tensor], spec: BackboneSpec, output: Path) -> None:
    """``sd`` to ``output`` atomically: safetensors (with the architecture as metadata) or ``torch.save``."""
    if output.suffix == ".safetensors":
        from safetensors.torch import save

        meta = {"arch": spec.arch, "stem": spec.stem, "image_size": spec.image_size, "patch_size": spec.patch_size}
        data = save({k: v.contiguous() for k, v in sd.items()}, metadata={"pcl": json.dumps(meta)})
        write_atomic(output, lambda f: f.write(data), "backbone")
    else:
        write_atomic(output, lambda f: torch.save(sd, f), "backbone")


@entry_point()
def main() -> int:
    """Write the backbone ``state_dict`` (atomically); 2 with one ``error:`` line for a file that is no PCL
    checkpoint or an output path that cannot be written."""
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("output", type=Path, help="FILE.safetensors (safetensors) or any other name (torch.save)")
    a = p.parse_args()
    if a.output.is_dir():
        raise PCLError(f"output {a.output} is a folder: give the file to write, e.g. {a.output / 'backbone.pth'}")
    ckpt = load_checkpoint(a.checkpoint)
    cfg = stored_config(ckpt, a.checkpoint)
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
    spec = BackboneSpec(cfg.model.arch, cfg.model.stem, cfg.data.aug.image_size, 1, cfg.model.patch_size)
    write(sd, spec, a.output)
    library = "torchvision" if spec.arch in ARCHS else "timm"
    print(f"wrote {a.output}: {len(sd)} tensors of a {library} {spec.arch} (epoch {ckpt['epoch']})")
    print(f"load: {recipe(spec, a.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
