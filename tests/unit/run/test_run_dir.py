"""Run-directory layout and the ``--resume`` lookup."""

from __future__ import annotations

from pathlib import Path

from pcl.run.run_dir import RunDir


def test_paths_of_a_run_directory(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    assert rd.last == tmp_path / "checkpoints" / "last.pth"
    assert rd.checkpoint(12) == tmp_path / "checkpoints" / "checkpoint_0012.pth"
    assert rd.clusters_file(3) == tmp_path / "clusters" / "epoch_0003.pth"
    assert (rd.tb, rd.features, rd.config) == (tmp_path / "tb", tmp_path / "features", tmp_path / "config.json")
    assert (rd.metrics, rd.eval) == (tmp_path / "metrics.json", tmp_path / "eval.json")
    assert not any(tmp_path.iterdir())  # asking for paths creates nothing


def test_resume_lookup(tmp_path: Path) -> None:
    rd = RunDir(str(tmp_path))
    assert rd.resume_path(None) is None
    assert rd.resume_path("auto") is None  # nothing yet: fresh start
    rd.last.parent.mkdir(parents=True)
    rd.last.write_bytes(b"x")
    assert rd.resume_path("auto") == rd.last
    assert rd.resume_path("elsewhere/ckpt.pth") == Path("elsewhere/ckpt.pth")
