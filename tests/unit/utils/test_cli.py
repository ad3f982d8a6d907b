"""The one CLI helper of every entry point: argparse errors and PCLErrors as one ``error:`` line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcl.utils.cli import ErrorParser, entry_point, error_line, pythonpath_env
from pcl.utils.errors import PCLError
from tests.helpers import ROOT


def test_parser_errors_become_pcl_errors() -> None:
    p = ErrorParser()
    p.add_argument("--n", type=int)
    with pytest.raises(PCLError, match="argument --n: invalid int value: 'x'"):
        p.parse_args(["--n", "x"])


def test_entry_point_prints_one_error_line_and_returns_2(capsys: pytest.CaptureFixture) -> None:
    @entry_point(ValueError)
    def main(argv: list[str]) -> int:
        if argv == ["pcl"]:
            raise PCLError("worker traceback\nline 2\npcl.utils.errors.PCLError: bad file x.jpg")
        if argv == ["value"]:
            raise ValueError("bad value")
        if argv == ["other"]:
            raise KeyError("a bug")
        return 0

    assert main([]) == 0
    assert main(["pcl"]) == 2 and capsys.readouterr().err == "error: bad file x.jpg\n"
    assert main(["value"]) == 2 and capsys.readouterr().err == "error: bad value\n"
    with pytest.raises(KeyError):  # bugs are not hidden as bad input
        main(["other"])


def test_error_line_of_an_empty_message_names_the_error() -> None:
    assert error_line(PCLError()) == "error: PCLError"


def test_pythonpath_env_puts_the_checkout_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = pythonpath_env(Path("/co"))
    assert env["PYTHONPATH"] == os.pathsep.join(["/co", "/elsewhere"]) and env["HOME"] == os.environ["HOME"]
    monkeypatch.delenv("PYTHONPATH")
    assert pythonpath_env("/co")["PYTHONPATH"] == "/co"


@pytest.mark.parametrize("tool", ["plot_curves", "make_subset", "inspect_clusters", "bench_cluster_metrics"])
def test_a_tools_bad_flag_is_one_error_line(tool: str) -> None:
    """Tools that used plain argparse printed usage; now every tool answers a bad flag with one line."""
    cmd = [sys.executable, str(ROOT / "tools" / f"{tool}.py"), "--no-such-flag"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env(ROOT), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")
