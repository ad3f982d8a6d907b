"""Logs a researcher can grep (issue 26, item 8): a run whose output is not a terminal prints no carriage return and
one ``epoch N:`` line per epoch, ends with a summary, and writes the same lines into ``<exp-dir>/train.log``
(torchrun, the suite runner and the SLURM launcher are checked in their own modules)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pcl.utils.logs import LogTee
from tests.helpers import ROOT, TINY_ARGS, make_near_duplicates, tool_env


def _epoch_lines(text: str) -> list[str]:
    return re.findall(r"^epoch (\d+):", text, flags=re.M)


def _run(cmd: list[str], **kwargs: object) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``cmd`` decoded as they are: ``text=True`` would turn a carriage return into
    a newline (universal newlines) and hide every progress bar from the checks."""
    p = subprocess.run(cmd, capture_output=True, env=tool_env(), timeout=600, **kwargs)  # type: ignore[call-overload]
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def _read(path: Path) -> str:
    """The file as written (``read_text`` would turn ``\\r`` into ``\\n``)."""
    return path.read_bytes().decode()


def test_piped_run_prints_one_line_per_epoch_and_writes_train_log(tmp_path: Path) -> None:
    """An unlabeled PCL run (no kNN monitor) through ``main_pcl.py`` with stdout and stderr in pipes."""
    data = make_near_duplicates(tmp_path / "images", 48)
    exp = tmp_path / "exp"
    cmd = [sys.executable, str(ROOT / "main_pcl.py"), str(data), *TINY_ARGS, "--exp-dir", str(exp)]
    code, out, err = _run(cmd, cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert "\r" not in out and "\r" not in err  # no progress bar off a terminal
    assert _epoch_lines(out) == ["0", "1"]
    summary = [ln for ln in out.splitlines() if ln.startswith(("summary:", "health:"))]
    assert len(summary) == 2 and summary[0].startswith("summary: epoch 1 (of 2): loss ")
    assert "acc_inst " in summary[0] and "acc_proto " in summary[0] and summary[1].startswith("health: ")
    log = _read(exp / "train.log")
    assert "\r" not in log and _epoch_lines(log) == ["0", "1"]
    assert all(line in log for line in summary) and "checkpoints: " in log
    # a second start of the finished run appends to the same file
    code, out, _ = _run([*cmd, "--resume", "auto"])
    assert code == 0 and "summary: no epoch trained in this start" in out
    assert _read(exp / "train.log").startswith(log)


def test_the_tee_writes_nothing_twice_and_no_bars(tmp_path: Path) -> None:
    """Where stdout already is the log file (the suite runner's redirection), the tee adds nothing; a write with
    a carriage return (a progress bar) reaches the terminal only."""
    log = tmp_path / "train.log"
    code = (
        "import sys; from pathlib import Path; from pcl.utils.logs import LogTee\n"
        f"t = LogTee(); t.start(Path({str(log)!r})); print('one line'); sys.stderr.write('\\rbar'); t.stop()\n"
    )
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, stderr=subprocess.PIPE, env=tool_env(), check=True)
    assert _read(log) == "one line\n"
    rc, out, err = _run([sys.executable, "-c", code])
    assert rc == 0 and out == "one line\n" and err == "\rbar" and _read(log) == "one line\none line\n"
    tee = LogTee()
    tee.stop()  # never started: nothing to undo
