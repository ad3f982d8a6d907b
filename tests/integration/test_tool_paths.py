"""Wrong-kind paths given to the tools (issue 27, defects 5 and 9): a file for a folder and back, a checkpoint for
a run, a run of the wrong kind; each is one ``error:`` line (exit 2), and inspect_clusters reads a checkpoint's
or a run's cluster result."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

from pcl.estep.clustering import ClusterResult, Granularity
from pcl.run.checkpoint import rng_state
from pcl.run.run_dir import RunDir
from tests.helpers import load_tool


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def run_tool(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``tools/NAME.py ARGV`` in-process (tools whose ``main`` reads ``sys.argv`` get it set)."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    main = load_tool(name).main
    return main(argv) if inspect.signature(main).parameters else main()


def cluster_state(epoch: int = 2) -> dict:
    levels = [Granularity(3, torch.arange(12) % 3, torch.eye(3, 4), torch.full((3,), 0.2), {})]
    return ClusterResult(epoch, levels).state_dict()


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    """A run folder whose ``last.pth`` is shaped like a training checkpoint (RNG states: not weights-only)."""
    rd = RunDir(tmp_path / "run")
    rd.checkpoints.mkdir(parents=True)
    torch.save({"epoch": 2, "rng": [rng_state()], "cluster_result": cluster_state(), "config": {}}, rd.last)
    return rd


# ---------------------------------------------------------------------------------------------- inspect_clusters
def test_inspect_clusters_reads_a_checkpoints_and_a_runs_cluster_result(
    run: RunDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pngs"
    assert run_tool("inspect_clusters", [str(run.last), "--out-dir", str(out)], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "k=3: 3 non-empty clusters, size min/median/max 4/4/4" in printed and (out / "last_k3_stats.png").is_file()
    assert run_tool("inspect_clusters", [str(run.root), "--out-dir", str(out)], monkeypatch) == 0
    assert f"reading {run.last}" in capsys.readouterr().out
    run.clusters.mkdir()
    for e in (1, 3):
        torch.save(cluster_state(e), run.clusters_file(e))
    assert run_tool("inspect_clusters", [str(run.root), "--out-dir", str(out)], monkeypatch) == 0
    assert f"reading {run.clusters_file(3)}" in capsys.readouterr().out  # the newest --save-clusters file


def test_inspect_clusters_wrong_kinds_are_one_error_line(
    run: RunDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    warmup = tmp_path / "warmup.pth"
    torch.save({"epoch": 1, "rng": [rng_state()], "cluster_result": None}, warmup)
    backbone = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, backbone)
    (tmp_path / "notes.txt").write_text("not a torch file")
    (tmp_path / "empty").mkdir()
    cases = {
        str(warmup): "holds no cluster result: it was written before the first E-step (epoch 1 < --warmup-epochs)",
        str(backbone): "is not a cluster result (no 'levels')",
        str(tmp_path / "notes.txt"): "is not a (complete) torch.save file",
        str(tmp_path / "empty"): "is a folder but not a run folder",
        str(tmp_path / "gone.pth"): "does not exist",
    }
    for path, needle in cases.items():
        assert run_tool("inspect_clusters", [path], monkeypatch) == 2
        assert needle in one_error_line(capsys), path
    assert run_tool("inspect_clusters", [str(run.last), "--out-dir", str(tmp_path / "notes.txt")], monkeypatch) == 2
    line = one_error_line(capsys)
    assert "--out-dir" in line and "is a file" in line
    assert run_tool("inspect_clusters", [str(run.last), "--labels-from", str(run.last)], monkeypatch) == 2
    assert "not a .txt or .csv file list" in one_error_line(capsys)


# ---------------------------------------------------------------------------------------------- the others
def test_export_backbone_wrong_kinds(
    run: RunDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    model = {"encoder_q.backbone.conv1.weight": torch.zeros(2, 3, 3, 3)}
    full = {**torch.load(run.last, weights_only=False), "model": model}
    torch.save(full, run.last)
    clusters = tmp_path / "epoch_0001.pth"
    torch.save({**cluster_state(), "config": {}}, clusters)
    cases = [
        ([str(run.root), str(tmp_path / "b.pth")], f"is a directory; expected {run.last}"),
        ([str(clusters), str(tmp_path / "b.pth")], "holds no model state"),
        ([str(tmp_path / "notes.txt"), str(tmp_path / "b.pth")], "cannot be read: not a (complete) file"),
        ([str(run.last), str(tmp_path / "folder")], "is a folder: give the file to write"),
        ([str(run.last), str(tmp_path / "notes.txt" / "b.pth")], "cannot create the folder of"),
    ]
    for argv, needle in cases:
        assert run_tool("export_backbone", argv, monkeypatch) == 2
        assert needle in one_error_line(capsys), argv
    assert not (tmp_path / "b.pth").exists()


def test_make_subset_wrong_kinds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import tarfile

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    out = str(tmp_path / "o.tar.gz")
    cases = [
        (["--src", str(tmp_path / "gone.tar.gz"), "--out", out], "does not exist"),
        (["--src", str(tmp_path / "folder"), "--out", out], "is a folder"),
        (["--src", str(tmp_path / "notes.txt"), "--out", out], "is not a readable .tar.gz archive"),
        (["--src", str(empty), "--out", out], "holds no ROOT/<split>/<class>/<image> files"),
        (["--src", str(empty), "--out", str(tmp_path / "folder")], "--out"),
    ]
    for argv, needle in cases:
        assert run_tool("make_subset", argv, monkeypatch) == 2
        assert needle in one_error_line(capsys), argv
    assert not Path(out).exists() and not list(tmp_path.glob("*.tmp"))


def test_plot_curves_no_tags_and_wrong_kinds(
    run: RunDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run.metrics.write_text('{"epochs": [{"epoch": 0, "epoch/acc_inst": 10.0}]}')
    (tmp_path / "folder").mkdir()
    cases = [
        ([str(run.root), "--tags", ""], "--tags names no tag"),
        ([str(run.root), "--tags", " , "], "--tags names no tag"),
        ([str(run.last)], "is a file: give run folders"),
        ([str(run.root), "--tags", "epoch/acc_inst", "--out", str(tmp_path / "folder")], "--out"),
    ]
    for argv, needle in cases:
        assert run_tool("plot_curves", argv, monkeypatch) == 2
        assert needle in one_error_line(capsys), argv
    assert run_tool("plot_curves", [str(run.root), "--tags", "epoch/acc_inst", "--out", str(tmp_path / "c.png")],
                    monkeypatch) == 0  # fmt: skip
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("tool", "argv", "needle"),
    [
        ("bench_estep", ["--n", "100", "--k", "5", "--dim", "4", "--work-dir", "{file}"], "--work-dir"),
        (
            "bench_epoch",
            ["--kmeans-only", "--n", "100", "--k", "5", "--dim", "4", "--work-dir", "{file}"],
            "--work-dir",
        ),
        ("bench_epoch", ["--kmeans-only", "--from-run", "{run}/checkpoints/last.pth"], "not a run directory"),
        ("bench_scan", ["--files", "10", "--keep", "{file}"], "--keep"),
        ("bench_data", ["{run}/checkpoints/last.pth"], "is a file but not a .txt or .csv file list"),
    ],
)
def test_bench_tools_wrong_kinds(
    run: RunDir,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tool: str,
    argv: list[str],
    needle: str,
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    argv = [a.format(file=tmp_path / "notes.txt", run=run.root) for a in argv]
    assert run_tool(tool, argv, monkeypatch) == 2
    assert needle in one_error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_submit_slurm_checks_its_folder_and_the_training_flags_before_submitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("submitit")
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (["--cluster", "local", "--job-dir", str(tmp_path / "notes.txt"), "--", "DATA"], "--job-dir"),
        (["--cluster", "local", "--", "DATA", "--exp-dir", str(tmp_path / "notes.txt")], "is not usable"),
        (["--cluster", "local", "--", "DATA", "--epochz", "1"], "main_pcl.py arguments: unrecognized arguments"),
        (["--cluster", "local", "--", "DATA", "--lr", "-1"], "main_pcl.py arguments: --lr"),
    ]
    for argv, needle in cases:
        assert run_tool("submit_slurm", argv, monkeypatch) == 2
        assert needle in one_error_line(capsys), argv
    assert not list(tmp_path.rglob("*.pkl"))  # nothing was submitted


def test_visualize_out_that_is_a_file_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 27, defect 5: ``--out EXISTING_FILE`` was a FileExistsError traceback."""
    out = tmp_path / "pics"
    out.write_text("not a folder")
    assert run_tool("visualize", [str(tmp_path / "run"), "--out", str(out)], monkeypatch) == 2
    assert one_error_line(capsys) == f"error: --out {out} is a file, not a folder"
    assert out.read_text() == "not a folder"
