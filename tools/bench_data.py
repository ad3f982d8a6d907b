"""Training-loader throughput (images/s, two augmented views each) against the step's throughput at the same batch.

    python tools/bench_data.py                                   # bundled subset, --workers 0,1,2
    python tools/bench_data.py /tmp/cifar/cifar10 --batches 20   # full CIFAR-10 (extract the shared archive)
    python tools/bench_data.py DATA --device cuda --workers 0,4,8,16 --stem small --json

Pipelines (``--pipelines``): ``pil`` = the training loader of ``main_pcl.py`` (decode JPEG/PNG + PIL
augmentation in ``--workers`` processes); ``pil-cached`` = the same with ``--cache-images`` (decoded once,
uint8 in RAM; bit-identical batches); ``gpu-aug`` = ``--gpu-aug`` (kornia on ``--device``, no workers).
Each loader is timed over ``--batches`` batches after its first batch (worker start-up, reported apart).
``cpu_s_per_image`` is the main process's CPU time per image: with 0 workers it is the whole cost of an
image, so ``1 / cpu_s_per_image`` is the throughput of one core, the figure to scale to other machines.
Decoding and augmenting one image are also timed alone (CPU time, main process). The step is
``tools/bench_step.py``'s (the engine's own PCL step) at the same batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import bench_step  # tools/bench_step.py, beside this file
import torch

from pcl.data.augment import AugConfig
from pcl.data.datasets import IndexedImages, MultiView, load_rgb, train_loader
from pcl.data.gpu_aug import GpuAugLoader
from pcl.data.image_cache import ImageCache
from pcl.data.sources import resolve_data
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

PIPELINES = ("pil", "pil-cached", "gpu-aug")


def time_loader(loader: object, batches: int) -> dict:
    """Wall images/s over ``batches`` batches after the first; start-up seconds; main-process CPU s/image."""
    loader.sampler.set_epoch(0)
    t0 = time.perf_counter()
    it = iter(loader)
    (q, _), index = next(it)
    if q.is_cuda:
        torch.cuda.synchronize()
    startup = time.perf_counter() - t0
    n, t1, c1 = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        try:
            (q, _), index = next(it)
        except StopIteration:
            break
        n += index.numel()
    if q.is_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t1, time.process_time() - c1
    del it
    if n == 0:
        raise PCLError("the data set has too few images for two batches; lower --batch-size")
    return {
        "images_per_s": round(n / wall, 1),
        "cpu_s_per_image": round(cpu / n, 6),
        "startup_s": round(startup, 3),
        "images": n,
    }


def per_image_costs(ds: IndexedImages, cfg: AugConfig, n: int) -> dict:
    """CPU seconds to decode one image, and to make its two augmented views from the decoded image."""
    paths = [p for p, _ in ds.samples[:n]]
    c0 = time.process_time()
    images = [load_rgb(p) for p in paths]
    c1 = time.process_time()
    aug = MultiView.from_spec(cfg.view_spec(), cfg)
    for img in images:
        aug(img)
    c2 = time.process_time()
    return {"decode_cpu_s": round((c1 - c0) / n, 7), "augment_two_views_cpu_s": round((c2 - c1) / n, 7)}


def step_throughput(a: argparse.Namespace) -> dict:
    """Images/s of the engine's PCL step (and MoCo's) at ``--batch-size``, from ``tools/bench_step.py``."""
    argv = ["--stem", a.stem, "--image-size", str(a.image_size), "--batch-size", str(a.batch_size),
            "--device", a.device, "--steps", str(a.step_steps), "--rounds", "1", "--warmup", "1",
            "--bn-splits", str(a.bn_splits), "--compare", "moco,pcl"]  # fmt: skip
    sa = bench_step.build_parser().parse_args(argv)
    sa.extra = ["--low-dim", str(sa.low_dim), "--temperature", str(sa.temperature)]
    res = bench_step.run(sa)
    return {
        name: {
            "s_per_step": s,
            "images_per_s": round(a.batch_size / s, 1),
            "cpu_images_per_s": round(a.batch_size / res["cpu_s_per_step"][name], 1),
        }
        for name, s in res["s_per_step"].items()
    }


def run(a: argparse.Namespace) -> dict:
    train = resolve_data(a.data).train
    cfg = AugConfig(image_size=a.image_size, blur_prob=a.blur_prob)
    ds = IndexedImages(train, MultiView.from_spec(cfg.view_spec(), cfg))
    if len(ds) < 2 * a.batch_size:
        raise PCLError(f"only {len(ds)} training images: fewer than two batches of --batch-size {a.batch_size}")
    out: dict = {
        "data": str(train.where),
        "num_images": len(ds),
        "device": a.device,
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "torch_threads": torch.get_num_threads(),
        "per_image": per_image_costs(ds, cfg, min(a.per_image_samples, len(ds))),
        "loader": {},
    }
    pipes = a.pipelines.split(",")
    if "pil-cached" in pipes or "gpu-aug" in pipes:
        t0 = time.perf_counter()
        cache = ImageCache([p for p, _ in ds.samples], show=False)
        out["cache"] = {"build_s": round(time.perf_counter() - t0, 2), "mib": round(cache.nbytes / 2**20, 1)}
    for pipe in pipes:
        if pipe == "gpu-aug":
            torch.manual_seed(0)
            loader = GpuAugLoader(cache.as_tensor(), cfg, a.batch_size, 0, torch.device(a.device))
            out["loader"]["gpu-aug"] = time_loader(loader, a.batches)
            continue
        ds.cache = cache if pipe == "pil-cached" else None
        for w in a.workers:
            torch.manual_seed(0)
            out["loader"][f"{pipe}/workers={w}"] = time_loader(train_loader(ds, a.batch_size, w, seed=0), a.batches)
    if a.step:
        out["step"] = step_throughput(a)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", default=None, help="ImageFolder root (default: the bundled CIFAR-10 subset)")
    p.add_argument("--batch-size", type=ranged(int, gt=0), default=256)
    p.add_argument("--image-size", type=ranged(int, gt=0, le=4096), default=32)
    p.add_argument(
        "--blur-prob", type=ranged(float, ge=0, le=1), default=0.0, help="as main_pcl.py's default for images <= 64 px"
    )
    p.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help=f"comma list of {', '.join(PIPELINES)}")
    p.add_argument("--batches", type=ranged(int, gt=0), default=8, help="timed batches per loader (after the first)")
    p.add_argument(
        "--per-image-samples", type=ranged(int, gt=0), default=200, help="images for the decode / augment split"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--threads", type=ranged(int, gt=0), default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--no-step", dest="step", action="store_false", help="skip the step throughput")
    p.add_argument("--stem", default="imagenet", choices=("imagenet", "small"), help="model of the step")
    p.add_argument("--step-steps", type=ranged(int, gt=0), default=2)
    p.add_argument("--bn-splits", type=ranged(int, gt=0), default=8, help="shuffle-BN sub-batches of the step's model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


@entry_point(ValueError)
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    a.workers = [int(w) for w in a.workers.split(",")]
    bad = set(a.pipelines.split(",")) - set(PIPELINES)
    if bad:
        raise PCLError(f"unknown pipeline(s) {', '.join(sorted(bad))}; choose from {', '.join(PIPELINES)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise PCLError("--device cuda was asked for but no CUDA device is available")
    if a.batches < 1 or a.batch_size < 1 or min(a.workers) < 0:
        raise PCLError("--batches and --batch-size must be >= 1, --workers >= 0")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    out = run(a)
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{out['data']}: {out['num_images']} images, batch {a.batch_size}, {out['torch_threads']} threads")
    print(f"per image (CPU, main process): {out['per_image']}")
    if "cache" in out:
        print(f"cache: {out['cache']}")
    for name, r in out["loader"].items():
        print(f"loader {name:22s} {r['images_per_s']:9.1f} img/s  (main CPU {r['cpu_s_per_image'] * 1e3:.3f} ms/img)")
    for name, r in out.get("step", {}).items():
        print(f"step   {name:22s} {r['images_per_s']:9.1f} img/s  (CPU-time {r['cpu_images_per_s']:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
