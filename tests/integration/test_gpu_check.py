"""``make gpu-check`` (tools/gpu_check.py) on a machine without a GPU: one line, exit 0, nothing run; ``--dry-run``
prints the plan, sized for 8 minutes; the report table from finished parts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, load_tool, tool_env

gpu_check = load_tool("gpu_check")


def test_without_a_gpu_it_says_so_in_one_line_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: False)

    def no_child(*args: object, **kw: object) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(gpu_check.subprocess, "run", no_child)
    assert gpu_check.main(["/nonexistent/cifar10.tar.gz", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines() == ["gpu-check: no CUDA GPU on this machine; nothing was run"]
    assert out.err == "" and not any(tmp_path.iterdir())


@pytest.mark.skipif(gpu_check.cuda_available(), reason="a CUDA GPU is here: the no-GPU path is not what runs")
def test_make_gpu_check_without_a_gpu_exits_0() -> None:
    done = subprocess.run(
        ["make", "-s", "gpu-check", "DATA=/nonexistent", f"GPU_PY={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=tool_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "gpu-check: no CUDA GPU on this machine; nothing was run"


def test_dry_run_prints_every_part_with_its_command_and_fits_8_minutes(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["/data/cifar10", "--dry-run"]) == 0
    out = capsys.readouterr().out
    parts = gpu_check.plan("/data/cifar10", Path("SCRATCH"))
    assert [p.name for p in parts] == ["cuda-tests", "step", "loader", "pcl-3-epochs", "estep"]
    assert sum(p.limit_s for p in parts) <= 8 * 60 - 40  # the installs get the rest
    for p in parts:
        assert f"{p.name} (limit {p.limit_s} s)" in out and " ".join(p.argv) in out
    train = next(p for p in parts if p.name == "pcl-3-epochs").argv
    assert train[1:3] == ["main_pcl.py", "/data/cifar10"] and train[train.index("--epochs") + 1] == "3"
    assert "--device" in train and train[train.index("--stem") + 1] == "small"
    assert out.splitlines()[1].startswith("  install: ")


def test_requirements_never_reinstall_torch(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# c\ntorch==0.0.1\ntorchvision==0.0.1\nnumpy>=1.0\nno-such-dist-xyz==1.0  # why\n")
    assert gpu_check.missing_requirements(req) == ["no-such-dist-xyz==1.0"]


def test_markdown_table_has_a_row_per_part() -> None:
    a = gpu_check.Part("step", "x", ["python"], 10, "ok", 12.34, 2048.0, {"images_per_s/pcl": 5000.0})
    b = gpu_check.Part("estep", "y", ["python"], 10, "timed out (10 s)", 10.0, None, {})
    lines = gpu_check.markdown([a, b]).splitlines()
    assert lines[2] == "| step | ok | 12.3 | 2048 | images_per_s/pcl 5000.0 |"
    assert lines[3] == "| estep | timed out (10 s) | 10.0 | – | – |"
