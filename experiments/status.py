"""Experiments: where each (run, seed) of a suite stands, read from its run folder (``run.py --status``).

    finished   metrics complete and the final checkpoint readable (``RunDir.is_finished``)
    running    a runner, a submitit task or the trainer holds the run's lock now
    failed     the last start exited non-zero (``status.json``, with its ``error:`` line)
    pending    not started, interrupted (resumes on the next start) or submitted and waiting
"""

from __future__ import annotations

import json

from launch import read_json

from pcl.run.lock import LOCK_NAME, is_locked
from pcl.run.run_dir import RunDir


def run_state(rd: RunDir) -> tuple[str, str]:
    """``(state, detail)`` of one run folder; ``detail`` is the error line of a failed run."""
    if rd.is_finished():
        return "finished", ""
    if is_locked(rd.runner_lock) or is_locked(rd.root / LOCK_NAME):
        return "running", ""
    status = read_json(rd.status)
    if status.get("status") == "failed":
        return "failed", str(status.get("error", ""))
    return "pending", ""


def epochs_done(rd: RunDir) -> str:
    """``done/total`` epochs from ``metrics.json`` (``0/?`` before the first epoch)."""
    try:
        doc = json.loads(rd.metrics.read_text())
    except (OSError, ValueError):
        return "0/?"
    return f"{len(doc.get('epochs', []))}/{doc.get('epochs_total', '?')}"


def status_table(runs: list[tuple[str, RunDir]], jobs: dict) -> str:
    """One line per ``(RUN/seedS, run folder)``: state, epochs, job id, error line; then the counts."""
    rows = [("run", "state", "epochs", "job", "")]
    counts: dict[str, int] = {}
    for key, rd in runs:
        state, detail = run_state(rd)
        counts[state] = counts.get(state, 0) + 1
        rows.append((key, state, epochs_done(rd), str((jobs.get(key) or {}).get("job_id", "-")), detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    order = ("finished", "running", "pending", "failed")
    lines.append(", ".join(f"{counts.get(s, 0)} {s}" for s in order))
    return "\n".join(ln.rstrip() for ln in lines)
