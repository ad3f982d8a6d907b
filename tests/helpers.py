"""Helpers shared by the test modules: tiny data, tiny models, the tiny training flags, TensorBoard scalars.

Test modules import from here (never from each other); the pytest fixtures built on these live in
``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from pcl.config import Config
from pcl.data.synthetic import write_low_detail, write_near_duplicates
from pcl.methods.pcl import PCL
from pcl.model.encoder import ModelConfig
from pcl.utils.cli import pythonpath_env

ROOT = Path(__file__).resolve().parents[1]

# main_pcl.py flags for a seconds-long CPU run on ``tiny_data`` (48 train images: 6 steps per epoch)
TINY_ARGS = [
    "--image-size",
    "16",
    "--batch-size",
    "8",
    "--pcl-r",
    "16",
    "--bn-splits",
    "2",
    "--num-cluster",
    "3,5",
    "--workers",
    "0",
    "--epochs",
    "2",
    "--warmup-epochs",
    "1",
    "--low-dim",
    "16",
    "--eval-batch-size",
    "16",
    "--kmeans-nredo",
    "1",
    "--kmeans-niter",
    "5",
    "--print-freq",
    "1",
]


def make_image_folder(root: Path, per_class: int, classes: int = 3, size: int = 16, seed: int = 0) -> Path:
    """Write ``classes * per_class`` small JPEGs whose class sets the dominant colour; returns ``root``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            img[..., c % 3] += 150
            Image.fromarray(img).save(d / f"{i:04d}.jpg", quality=90)
    return root


def tiny_model(**overrides: object) -> PCL:
    """A resnet18 PCL with an 8-d embedding, a queue of 10 and m = 0.9; ``overrides``: ``ModelConfig`` fields."""
    cfg = ModelConfig(arch="resnet18", low_dim=8, pcl_r=10, moco_m=0.9, bn_splits=1)
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return PCL.from_config(Config(model=cfg))


def scalars(exp_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pcl.run.run_dir import RunDir

    acc = EventAccumulator(str(RunDir(exp_dir).tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (scripts, not a package) as a module, e.g. ``load_tool("reference")``."""
    tools = str(ROOT / "tools")
    if tools not in sys.path:  # the tools import their siblings (bench_estep -> reference) as scripts do
        sys.path.append(tools)
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in the tool look their module up
    spec.loader.exec_module(module)
    return module


def load_experiments() -> ModuleType:
    """Import the suite runner ``experiments/run.py`` (a script beside its ``suite`` and ``summary`` modules, which
    it imports as scripts do: ``experiments/`` goes on the path)."""
    folder = str(ROOT / "experiments")
    if folder not in sys.path:
        sys.path.append(folder)
    if "experiments_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("experiments_run", ROOT / "experiments" / "run.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["experiments_run"] = module
    return sys.modules["experiments_run"]


def tool_env() -> dict[str, str]:
    """Environment for running a tool as a subprocess: this checkout's ``pcl`` first on the path, so that the
    tests check this checkout even where another one is installed in the environment."""
    return pythonpath_env(ROOT)


# TINY_ARGS as a suite's [base] table (flag -> value)
TINY_BASE = "\n".join(f'{k.removeprefix("--")} = "{v}"' for k, v in zip(TINY_ARGS[::2], TINY_ARGS[1::2], strict=True))


def write_suite(path: Path, runs: str, seeds: int = 1) -> Path:
    """A suite file at ``path``: ``TINY_ARGS`` as its base, then ``runs`` (TOML ``[[runs]]`` / ``[[sweeps]]``)."""
    path.write_text(f'description = "tiny"\nseeds = {seeds}\n[base]\n{TINY_BASE}\n{runs}')
    return path


def make_low_detail_folder(root: Path, per_class: int, classes: int = 3, size: int = 16, seed: int = 0) -> Path:
    """Low-detail labelled JPEGs (``pcl.data.synthetic.write_low_detail``): an instance task with little to hold."""
    return write_low_detail(root, per_class, classes, size, seed)


def make_near_duplicates(root: Path, count: int, size: int = 16, seed: int = 0) -> Path:
    """Near-duplicate unlabeled JPEGs (``pcl.data.synthetic.write_near_duplicates``): no instance task to learn."""
    return write_near_duplicates(root, count, size, seed)
