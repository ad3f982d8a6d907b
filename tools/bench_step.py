"""Seconds per training step of the engine's own step: MoCo v2 vs PCL, side by side, interleaved.

    python tools/bench_step.py                                    # CIFAR protocol: k=500,1000,2000, r=4096
    python tools/bench_step.py --imagenet-clusters                # k=25000,50000,100000, r=16384, N=1.28M
    python tools/bench_step.py --compare pcl,pcl+channels_last,pcl+compile --device cuda --amp bf16
    python tools/bench_step.py --json --profile                   # + torch.profiler top ops of the pcl step

What is timed is ``Trainer.step`` (forward, losses, backward, the guard, optimizer step, momentum update,
enqueue) of a ``Trainer`` built from ``main_pcl.py``'s own config parser and the same flags as a training run,
on synthetic batches (random images, random dataset indices). ``moco`` runs the
step without cluster results (InfoNCE only, as in the warmup epochs); ``pcl`` runs it with a synthetic
cluster result of ``--num-cluster`` granularities over ``--num-train`` images (random assignments,
random L2-normalised centroids, concentrations around T), i.e. the ProtoNCE work of a real epoch.
A ``+channels_last`` / ``+compile`` suffix builds that variant's model in channels-last format and/or
wraps it in ``torch.compile``.

Variants are interleaved (moco, pcl, moco, pcl, ... for ``--rounds`` rounds of ``--steps`` steps each)
so that background load hits all of them alike; the figure per variant is the median over rounds and the
ratio is the median of the per-round ratios. On CUDA every timed block is synchronised. Besides wall
time the process's CPU time is reported (``cpu_*``): on a shared CPU it counts only this process's work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pcl.config import parse_config, to_dict, validate
from pcl.estep.clustering import ClusterResult, Granularity
from pcl.methods import method_class
from pcl.train.engine import EngineConfig, Loaders, Trainer
from pcl.train.optim import build_optimizer, param_groups
from pcl.utils.cli import ErrorParser, entry_point
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError
from pcl.utils.flags import ranged

CIFAR = {"num_cluster": "500,1000,2000", "pcl_r": 4096, "num_train": 50_000}
SETTINGS = ("arch", "stem", "image_size", "batch_size", "pcl_r", "num_cluster", "num_train", "amp", "optimizer")
SETTINGS += ("steps", "rounds", "warmup")
IMAGENET = {"num_cluster": "25000,50000,100000", "pcl_r": 16384, "num_train": 1_281_167}


@dataclass(frozen=True)
class Variant:
    """``moco`` | ``pcl``, optionally ``+channels_last`` and/or ``+compile``."""

    name: str
    proto: bool
    channels_last: bool
    compile: bool

    @classmethod
    def parse(cls, name: str) -> Variant:
        base, *opts = name.split("+")
        if base not in ("moco", "pcl") or not set(opts) <= {"channels_last", "compile"}:
            raise PCLError(f"unknown variant {name!r}; use moco|pcl with optional +channels_last / +compile")
        return cls(name, base == "pcl", "channels_last" in opts, "compile" in opts)


def train_flags(a: argparse.Namespace) -> list[str]:
    """``main_pcl.py`` flags of the run whose step is timed."""
    return [
        "--arch", a.arch, "--stem", a.stem, "--image-size", str(a.image_size), "--batch-size", str(a.batch_size),
        "--pcl-r", str(a.pcl_r), "--num-cluster", a.num_cluster, "--moco-m", str(a.moco_m),
        "--optimizer", a.optimizer, "--amp", a.amp, "--bn-splits", str(a.bn_splits),
        "--cluster-head", a.cluster_head, "--device", a.device, *a.extra,
    ]  # fmt: skip


def build_trainer(flags: list[str], exp_dir: Path, channels_last: bool = False) -> Trainer:
    """A ``Trainer`` with the model and optimizer a training run with ``flags`` would get; no data loaders."""
    cfg = parse_config([*flags, "--exp-dir", str(exp_dir), *(["--channels-last"] if channels_last else [])])
    validate(cfg)
    info = DistInfo(device=torch.device("cuda" if cfg.train.device == "cuda" else "cpu"))
    raw = method_class(cfg.method).from_config(cfg).to(info.device)  # as pcl.cli.build_model in one process
    model = raw = raw.to(memory_format=torch.channels_last) if cfg.step.channels_last else raw
    o = cfg.optim
    optimizer = build_optimizer(o.optimizer, param_groups(raw, o.wd, o.exclude_bn_bias), o.lr, momentum=o.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loaders = Loaders(train=None, estep=None, num_train=0)  # type: ignore[arg-type]
    engine = EngineConfig(cfg.train, cfg.step, cfg.checkpoint, cfg.monitor)
    return Trainer(engine, raw, model, optimizer, scheduler, loaders, info, to_dict(cfg))


def synthetic_clusters(
    num_cluster: list[int], num_train: int, dim: int, temperature: float, device: torch.device, seed: int = 0
) -> ClusterResult:
    """A cluster result of the given sizes: random assignments ``(N,)``, unit centroids ``(k, d)``, phi ~ T."""
    g = torch.Generator().manual_seed(seed)
    levels = []
    for k in num_cluster:
        im2cluster = torch.randint(0, k, (num_train,), generator=g)
        centroids = F.normalize(torch.randn(k, dim, generator=g), dim=1)
        concentration = temperature * (0.5 + torch.rand(k, generator=g))
        levels.append(Granularity(k, im2cluster, centroids, concentration * temperature / concentration.mean()))
    return ClusterResult(0, levels).to(device)


class StepBench:
    """One variant: its trainer, a fixed synthetic batch and (for PCL) the cluster levels."""

    def __init__(self, v: Variant, a: argparse.Namespace, exp_dir: Path, clusters: ClusterResult) -> None:
        self.v, self.sync = v, a.device == "cuda"
        self.trainer = build_trainer(train_flags(a), exp_dir / v.name, v.channels_last)
        if v.compile:
            self.trainer.model = torch.compile(self.trainer.model)
        g = torch.Generator().manual_seed(1)
        shape = (a.batch_size, 3, a.image_size, a.image_size)
        self.im_q, self.im_k = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        self.index = torch.randint(0, a.num_train, (a.batch_size,), generator=g)
        if self.sync:  # what the training loader hands over on CUDA: pinned host memory, copied non_blocking
            self.im_q, self.im_k, self.index = (t.pin_memory() for t in (self.im_q, self.im_k, self.index))
        self.trainer.method.cluster_result = clusters if v.proto else None

    def step(self) -> None:
        """The engine's step, ``Trainer.step``; a non-finite step is an error (the benchmark would time a skip)."""
        result = self.trainer.step([self.im_q, self.im_k], self.index)
        if result.bad:
            raise PCLError(f"benchmark step went non-finite: {result.bad}")

    def time(self, steps: int) -> tuple[float, float]:
        """Wall seconds and this process's CPU seconds per step over ``steps`` steps."""
        if self.sync:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        if self.sync:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    def close(self) -> None:
        self.trainer.tb.close()


def profile_step(bench: StepBench, steps: int, top: int = 12) -> list[dict]:
    """torch.profiler over ``steps`` steps: the ``top`` ops by self time (CPU, plus CUDA when timed on GPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.sync else [])
    with profile(activities=acts) as prof:
        bench.time(steps)
    key = "self_device_time_total" if bench.sync else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [
        {"op": e.key, "calls": e.count, "self_ms_per_step": round(getattr(e, key) / 1e3 / steps, 3)} for e in events
    ]


def run(a: argparse.Namespace) -> dict:
    """Build every variant, warm up, time the interleaved rounds; returns the JSON-ready summary."""
    variants = [Variant.parse(n) for n in a.compare.split(",")]
    if len({v.name for v in variants}) != len(variants):
        raise PCLError(f"--compare lists a variant twice: {a.compare}")
    torch.manual_seed(a.seed)
    num_cluster = [int(x) for x in a.num_cluster.split(",")]
    if max(num_cluster) > a.num_train:
        raise PCLError(f"--num-cluster {max(num_cluster)} exceeds --num-train {a.num_train}")
    device = torch.device(a.device)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu: dict[str, list[float]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        clusters = synthetic_clusters(num_cluster, a.num_train, a.low_dim, a.temperature, device, a.seed)
        benches = [StepBench(v, a, Path(tmp), clusters) for v in variants]
        for b in benches:
            b.time(a.warmup)
        for _ in range(a.rounds):
            for b in benches:
                wall, proc = b.time(a.steps)
                times[b.v.name].append(wall)
                cpu[b.v.name].append(proc)
        prof = profile_step(next((b for b in benches if b.v.proto), benches[-1]), a.steps) if a.profile else None
        for b in benches:
            b.close()
    base = variants[0].name

    def ratios(t: dict[str, list[float]]) -> dict[str, float]:
        return {n: round(statistics.median(x / y for x, y in zip(v, t[base], strict=True)), 4) for n, v in t.items()}

    out = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "settings": {k: getattr(a, k) for k in SETTINGS},
        "s_per_step": {n: round(statistics.median(t), 5) for n, t in times.items()},
        "s_per_step_rounds": {n: [round(x, 5) for x in t] for n, t in times.items()},
        f"ratio_to_{base}": ratios(times),
        "cpu_s_per_step": {n: round(statistics.median(t), 5) for n, t in cpu.items()},
        f"cpu_ratio_to_{base}": ratios(cpu),
    }
    if prof is not None:
        out["profile_top_ops"] = prof
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", default="moco,pcl", help="variants, first = reference of the ratios")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="small", choices=("imagenet", "small"), help="default: the CIFAR protocol's")
    p.add_argument("--image-size", type=ranged(int, gt=0, le=4096), default=32)
    p.add_argument("--batch-size", type=ranged(int, gt=0), default=256)
    p.add_argument("--pcl-r", type=ranged(int, gt=0), default=CIFAR["pcl_r"], help="queue and negative prototypes")
    p.add_argument("--num-cluster", default=CIFAR["num_cluster"])
    p.add_argument(
        "--imagenet-clusters",
        action="store_true",
        help="ImageNet granularities: --num-cluster 25000,50000,100000 --pcl-r 16384 --num-train 1281167",
    )
    p.add_argument(
        "--num-train", type=ranged(int, gt=0), default=CIFAR["num_train"], help="images covered by the clusters"
    )
    p.add_argument("--moco-m", type=ranged(float, ge=0, lt=1), default=0.99)
    p.add_argument("--low-dim", type=ranged(int, gt=0, le=65536), default=128)
    p.add_argument("--temperature", type=ranged(float, gt=0), default=0.2)
    p.add_argument("--optimizer", default="sgd-cos")
    p.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    p.add_argument("--bn-splits", type=ranged(int, gt=0), default=8)
    p.add_argument("--cluster-head", default="none")
    p.add_argument("--steps", type=ranged(int, gt=0), default=3, help="timed steps per round")
    p.add_argument("--rounds", type=ranged(int, gt=0), default=5)
    p.add_argument("--warmup", type=ranged(int, ge=0), default=2, help="untimed steps per variant first")
    p.add_argument("--seed", type=ranged(int, ge=0, le=2**31 - 1), default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--threads", type=ranged(int, gt=0), default=None, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument("--profile", action="store_true", help="add torch.profiler's top ops of the first pcl variant")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("extra", nargs="*", help="further main_pcl.py flags after --, e.g. -- --cluster-head mlp")
    return p


@entry_point()
def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise PCLError("--device cuda was asked for but no CUDA device is available")
    if a.steps < 1 or a.rounds < 1 or a.warmup < 0:
        raise PCLError("--steps and --rounds must be >= 1, --warmup >= 0")
    if a.imagenet_clusters:
        a.num_cluster, a.pcl_r, a.num_train = IMAGENET["num_cluster"], IMAGENET["pcl_r"], IMAGENET["num_train"]
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    a.extra = [*a.extra, "--low-dim", str(a.low_dim), "--temperature", str(a.temperature)]
    out = run(a)
    if a.json:
        print(json.dumps(out))
        return 0
    ref = a.compare.split(",")[0]
    print(f"{out['device']}, {out['torch_threads']} threads, {out['settings']}")
    for name, s in out["s_per_step"].items():
        print(
            f"{name:28s} {s:8.4f} s/step ({out[f'ratio_to_{ref}'][name]:.3f}x {ref})   "
            f"CPU {out['cpu_s_per_step'][name]:8.4f} s/step ({out[f'cpu_ratio_to_{ref}'][name]:.3f}x {ref})"
        )
    for op in out.get("profile_top_ops", []):
        print(f"  {op['self_ms_per_step']:9.3f} ms/step  {op['calls']:6d} calls  {op['op']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
