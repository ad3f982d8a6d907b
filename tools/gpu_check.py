#!/usr/bin/env python
"""One-shot check of a CUDA machine (``make gpu-check DATA=...``): the CUDA tests, the step, the loader, 3 PCL
epochs on full CIFAR-10 and the E-step; one JSON and one Markdown table at the end.

    python tools/gpu_check.py /data/cifar10-jpg.tar.gz        # or an extracted CIFAR-10 image folder
    python tools/gpu_check.py --dry-run                       # the plan (commands, time limits); runs nothing

On a machine without a CUDA GPU it says so in one line and exits 0 without running anything. Each part runs as
a child process with its own time limit (the whole plan is sized for under 8 minutes on one H100/H200); a part
that fails or runs out of time is recorded as such and the next one runs. Peak GPU memory of each part is
polled from ``nvidia-smi`` (device memory in use, so it includes the CUDA context); the training run also
reports torch's own peak (``memory/*`` scalars). Packages: what requirements.txt lists and the machine lacks is
installed, except torch / torchvision (the machine's CUDA build is kept); GPU faiss is tried
(``faiss-gpu-cu12``), else the E-step uses CPU faiss and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # pcl.utils.cli is stdlib-only: importable before anything is installed
from pcl.utils.cli import ErrorParser, entry_point  # noqa: E402

KEEP = ("torch", "torchvision")  # the machine's CUDA builds stay


@dataclass
class Part:
    """One part of the plan: ``argv`` (run from the repository root), its time limit in seconds."""

    name: str
    what: str
    argv: list[str]
    limit_s: int
    status: str = "not run"
    seconds: float = 0.0
    peak_gpu_mib: float | None = None
    figures: dict[str, float | str] = field(default_factory=dict)


def plan(data: str, work: Path, py: str = sys.executable) -> list[Part]:
    """The parts in order; ``data``: the image folder (after extraction), ``work``: the scratch folder.
    Limits: 440 s in all, within the 8 minutes with the installs."""
    tests = [py, "-m", "pytest", "-q", "tests/integration/test_cuda.py"]
    step = [py, "tools/bench_step.py", "--device", "cuda", "--amp", "bf16", "--stem", "small", "--batch-size", "256"]
    step += ["--compare", "pcl,pcl+channels_last,pcl+compile", "--steps", "20", "--rounds", "3", "--json"]
    loader = [py, "tools/bench_data.py", data, "--device", "cuda", "--stem", "small", "--workers", "0,4,8", "--json"]
    train = [py, "main_pcl.py", data, "--device", "cuda", "--stem", "small", "--epochs", "3", "--warmup-epochs", "1"]
    train += ["--amp", "bf16", "--num-cluster", "500,1000,2000", "--batch-size", "256", "--pcl-r", "4096"]
    train += ["--gpu-aug", "--exp-dir", str(work / "pcl3")]
    estep = [py, "tools/bench_estep.py", "--n", "1000000", "--k", "1000", "--dim", "128"]
    estep += ["--work-dir", str(work / "estep")]
    return [
        Part("cuda-tests", "tests/integration/test_cuda.py", tests, 90),
        Part("step", "bench_step.py --device cuda, bf16: plain, channels-last, torch.compile (images/s)", step, 100),
        Part("loader", "bench_data.py: PIL workers 0,4,8 vs --gpu-aug against the step (images/s)", loader, 60),
        Part("pcl-3-epochs", "main_pcl.py: 3 epochs of PCL (1 warmup), full CIFAR-10, small stem, bf16", train, 150),
        Part("estep", "bench_estep.py: N=1,000,000 x 128-d, k=1000 (GPU faiss if importable)", estep, 40),
    ]


def print_plan(parts: list[Part], installs: list[str]) -> None:
    total = sum(p.limit_s for p in parts)
    print(f"gpu-check plan ({len(parts)} parts, at most {total} s of run time, plus installs):")
    print(f"  install: {' '.join(installs) if installs else 'nothing missing'}")
    for p in parts:
        print(f"  {p.name} (limit {p.limit_s} s): {p.what}\n      {' '.join(p.argv)}")


def cuda_available() -> bool:
    """A CUDA GPU torch can use (torch imported in a child, so a broken install cannot crash this script)."""
    if shutil.which("nvidia-smi") is None:
        return False
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing_requirements(requirements: Path = ROOT / "requirements.txt") -> list[str]:
    """Requirement lines whose distribution is not installed (torch / torchvision never: see ``KEEP``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for line in requirements.read_text().splitlines():
        req = line.split("#")[0].strip()
        if not req:
            continue
        name = req.split("=")[0].split("<")[0].split(">")[0].strip()
        if name in KEEP:
            continue
        try:
            version(name)
        except PackageNotFoundError:
            out.append(req)
    return out


class GpuMemoryPoll:
    """Largest ``nvidia-smi`` memory.used (MiB, summed over GPUs) seen while the context is open (every 0.5 s)."""

    def __init__(self) -> None:
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                used = sum(float(v) for v in subprocess.run(cmd, capture_output=True, text=True).stdout.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemoryPoll:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_part(part: Part, logs: Path) -> str:
    """Run one part (stdout + stderr to ``logs/<name>.log``); sets status, seconds, peak memory; returns stdout."""
    log = logs / f"{part.name}.log"
    t0 = time.time()
    with GpuMemoryPoll() as mem:
        try:
            done = subprocess.run(part.argv, cwd=ROOT, capture_output=True, text=True, timeout=part.limit_s)
            part.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
            out, err = done.stdout, done.stderr
        except subprocess.TimeoutExpired as e:
            part.status = f"timed out ({part.limit_s} s)"
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    part.seconds, part.peak_gpu_mib = round(time.time() - t0, 1), mem.peak
    log.write_text(out + "\n--- stderr ---\n" + err)
    return out


def figures(part: Part, stdout: str, work: Path) -> dict[str, float | str]:
    """The headline figures of a finished part (empty when its output cannot be read)."""
    try:
        if part.name == "step":
            res = json.loads(stdout)
            batch = float(res["settings"].get("batch_size", 256))
            return {f"images_per_s/{k}": round(batch / v, 1) for k, v in res["s_per_step"].items()}
        if part.name == "loader":
            res = json.loads(stdout)
            out = {f"loader_images_per_s/{k}": round(v["images_per_s"], 1) for k, v in res["loader"].items()}
            return out | {f"step_images_per_s/{k}": round(v["images_per_s"], 1) for k, v in res["step"].items()}
        if part.name == "pcl-3-epochs":
            epochs = json.loads((work / "pcl3" / "metrics.json").read_text())["epochs"]
            last = epochs[-1]
            return {k: round(float(v), 2) for k, v in last.items() if k.startswith(("time/", "memory/", "knn"))}
        if part.name == "estep":
            import importlib.util

            gpu = importlib.util.find_spec("faiss") is not None and _faiss_gpu()
            return {"faiss": "GPU" if gpu else "CPU (no GPU faiss importable)", "tail": stdout.strip()[-200:]}
    except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
        return {}
    return {}


def _faiss_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def markdown(parts: list[Part]) -> str:
    lines = ["| part | status | seconds | peak GPU MiB | figures |", "| --- | --- | --- | --- | --- |"]
    for p in parts:
        figs = ", ".join(f"{k} {v}" for k, v in p.figures.items() if k != "tail") or "–"
        mem = "–" if p.peak_gpu_mib is None else f"{p.peak_gpu_mib:.0f}"
        lines.append(f"| {p.name} | {p.status} | {p.seconds:.1f} | {mem} | {figs} |")
    return "\n".join(lines) + "\n"


def prepare_data(data: Path, scratch: Path) -> Path:
    """An image folder: ``data`` itself, or the tarball extracted under ``scratch`` (its single top folder)."""
    if data.is_dir():
        return data
    if not tarfile.is_tarfile(data):
        raise SystemExit(f"error: {data} is neither a folder nor a tar archive")
    with tarfile.open(data) as tar:
        tar.extractall(scratch / "data", filter="data")
    tops = [p for p in (scratch / "data").iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 else scratch / "data"


@entry_point()
def main(argv: list[str] | None = None) -> int:
    ap = ErrorParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data", nargs="?", help="CIFAR-10 as a .tar.gz of image folders or an extracted folder")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="report and logs folder")
    args = ap.parse_args(argv)
    if args.dry_run:
        print_plan(plan(args.data or "DATA", Path("SCRATCH")), missing_requirements())
        return 0
    if not cuda_available():
        print("gpu-check: no CUDA GPU on this machine; nothing was run")
        return 0
    if args.data is None or not Path(args.data).exists():
        print(
            f"error: give the CIFAR-10 tarball or folder (make gpu-check DATA=...); got {args.data!r}", file=sys.stderr
        )
        return 2
    installs = missing_requirements()
    if installs:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *installs], check=False)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "faiss-gpu-cu12"], check=False, capture_output=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        scratch = Path(tmp)
        parts = plan(str(prepare_data(Path(args.data), scratch)), scratch)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        for p in parts:
            print(f"gpu-check: {p.name} ...", flush=True)
            p.figures = figures(p, run_part(p, args.out), scratch)
    (args.out / "gpu_check.json").write_text(json.dumps([asdict(p) for p in parts], indent=1) + "\n")
    table = markdown(parts)
    (args.out / "gpu_check.md").write_text(table)
    print(table + f"(report: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}; logs there)")
    return 0 if all(p.status == "ok" for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
