"""The test suite cleans up after itself: its tiny runs write ~180 MB of checkpoints each, and a CI machine's disk
once filled up with the folders of earlier sessions and of passing tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, tool_env

INNER = """
import json
from pathlib import Path

import pytest

LOG = Path({log!r})


def record(key: str, path: Path) -> None:
    (path / "payload.bin").write_bytes(b"x" * 1000)
    seen = json.loads(LOG.read_text()) if LOG.exists() else {{}}
    seen[key] = str(path)
    LOG.write_text(json.dumps(seen))


@pytest.fixture(scope="module")
def shared(module_tmp: Path) -> Path:
    record(__name__ + ".module", module_tmp)
    return module_tmp


def test_uses_both(shared: Path, tmp_path: Path) -> None:
    record(__name__ + ".tmp_path", tmp_path)
    assert {ok}
"""


def test_passing_tests_leave_no_folders_and_failing_ones_keep_theirs(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    hooks = "from tests.conftest import module_tmp, pytest_runtest_makereport  # noqa: F401\n"
    (inner / "conftest.py").write_text(hooks)
    log = tmp_path / "seen.json"
    (inner / "test_good.py").write_text(INNER.format(log=str(log), ok=True))
    (inner / "test_bad.py").write_text(INNER.format(log=str(log), ok=False))
    env = tool_env()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base"), "."]
    proc = subprocess.run(cmd, cwd=inner, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-2000:]

    seen = {k: Path(v) for k, v in json.loads(log.read_text()).items()}
    assert set(seen) == {f"{m}.{k}" for m in ("test_good", "test_bad") for k in ("module", "tmp_path")}
    assert not seen["test_good.module"].exists()
    assert not seen["test_good.tmp_path"].exists()
    assert (seen["test_bad.module"] / "payload.bin").is_file()  # kept for a post-mortem
    assert (seen["test_bad.tmp_path"] / "payload.bin").is_file()
