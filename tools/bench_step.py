"""Training-step throughput of the PCL model under memory-format / compile / AMP variants, side by side.

    python tools/bench_step.py --arch resnet18 --batch-size 128 --image-size 32 --steps 10
    python tools/bench_step.py --variants eager,channels_last,compile --device cuda

Each variant times ``--steps`` forward+backward+optimizer steps (after ``--warmup`` untimed ones) of the
full PCL forward (query encoder, shuffled key encoder, InfoNCE) and prints one JSON line; the last line
gives each variant's time relative to the first.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pcl.amp import AMP_MODES, autocast_factory
from pcl.losses import info_nce
from pcl.model import PCL, ModelConfig


def time_variant(name: str, a: argparse.Namespace, device: torch.device) -> float:
    """Seconds per step for variant ``name`` (eager | channels_last | compile | compile_channels_last)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=a.arch, stem=a.stem, pcl_r=4096, bn_splits=a.bn_splits)
    model = PCL.from_config(cfg).to(device)
    fmt = torch.channels_last if "channels_last" in name else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fwd = torch.compile(model) if name.startswith("compile") else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=device).to(memory_format=fmt)
    autocast = autocast_factory(device, a.amp)

    def step() -> None:
        with autocast():
            emb = fwd(x, x, with_cluster=False)
        loss, _ = info_nce(emb.q.float(), emb.k.float(), model.queue, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.momentum_update()

    for _ in range(a.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / a.steps


def main() -> None:
    """Time every ``--variants`` entry and print one JSON line each, then the relative times."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="imagenet", choices=("imagenet", "small"))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--bn-splits", type=int, default=8)
    p.add_argument("--amp", default="off", choices=AMP_MODES)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default="eager,channels_last")
    a = p.parse_args()
    device = torch.device(a.device)
    results = {}
    for name in a.variants.split(","):
        results[name] = time_variant(name, a, device)
        print(
            json.dumps(
                {
                    "variant": name,
                    "device": str(device),
                    "arch": a.arch,
                    "batch": a.batch_size,
                    "image_size": a.image_size,
                    "amp": a.amp,
                    "s_per_step": round(results[name], 4),
                }
            )
        )
    base = next(iter(results.values()))
    print(json.dumps({"relative_time": {k: round(v / base, 3) for k, v in results.items()}}))


if __name__ == "__main__":
    main()
