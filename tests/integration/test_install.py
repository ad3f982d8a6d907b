"""The library installed non-editable (``pip install .``, no ``-e``) runs a suite from another directory.

The fresh venv (no pip of its own) sees the shared environment's packages (torch, faiss, setuptools, ...) through
a ``.pth`` line, so nothing is downloaded or rebuilt (``--system-site-packages`` would expose the base
interpreter's packages, not the shared venv's). The project is installed from a copy of ``pyproject.toml`` +
``pcl/`` (pip writes build files next to the sources; the checkout stays clean).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers import ROOT, TINY_ARGS


def _venv_with_installed_pcl(tmp: Path) -> Path:
    """A venv holding a non-editable install of this checkout's ``pcl``; returns its python."""
    src = tmp / "src"
    shutil.copytree(ROOT / "pcl", src / "pcl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src / "pyproject.toml")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "shared_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # the shared environment's pip and setuptools install into the new venv (Python 3.11's bundled ones are too old)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation"]
    pip += ["--no-index", str(src)]
    subprocess.run(pip, check=True, env=_clean_env())
    return python


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH: ``pcl`` must come from the install, not from a checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_installed_package_runs_a_suite_from_another_directory(tmp_path: Path, tiny_data: Path) -> None:
    python = _venv_with_installed_pcl(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import pcl; print(pcl.__file__)"], cwd=elsewhere, env=_clean_env(),
                           check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the installed copy, not the checkout
    base = "\n".join(f'{k.removeprefix("--")} = "{v}"' for k, v in zip(TINY_ARGS[::2], TINY_ARGS[1::2], strict=True))
    suite = elsewhere / "mini.toml"
    suite.write_text(f'seeds = 1\n[base]\n{base}\nepochs = "1"\n[[runs]]\nname = "pcl"\n'.replace('epochs = "2"\n', ""))
    cmd = [str(python), str(ROOT / "experiments" / "run.py"), "mini.toml", str(tiny_data), "--out", "out"]
    proc = subprocess.run(cmd, cwd=elsewhere, env=_clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exp = elsewhere / "out" / "mini" / "pcl" / "seed0"
    assert json.loads((exp / "metrics.json").read_text())["complete"]
    assert json.loads((exp / "status.json").read_text())["status"] == "done"
    assert "| pcl | 1/1 |" in (elsewhere / "out" / "mini" / "results.md").read_text()
