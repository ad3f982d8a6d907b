"""The command-line tools: E-step benchmark, cluster inspection, kNN evaluation and backbone export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pcl.config import parse_config, to_dict
from pcl.estep.clustering import ClusterResult, Granularity
from tests.helpers import ROOT, load_tool, make_image_folder, tiny_model, tool_env


def test_bench_estep_tiny(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "bench_estep.py"),
        "--n",
        "3000",
        "--k",
        "20",
        "--dim",
        "16",
        "--nredo",
        "1",
        "--niter",
        "5",
        "--shard-rows",
        "1000",
        "--work-dir",
        str(work),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=tool_env(), timeout=120).stdout
    row = json.loads(out.strip().splitlines()[-1])
    assert {"n", "k", "dim", "mode", "seconds", "peak_rss_mib", "nmi"} <= row.keys()
    assert {"write", "cluster", "total"} <= row["seconds"].keys()
    assert row["mode"] == "streamed" and row["n"] == 3000 and row["peak_rss_mib"] > 0
    assert row["nmi"] > 0.8
    assert not work.exists()  # shards cleaned up


def test_inspect_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_image_folder(tmp_path / "train", per_class=8, size=12)
    labels = np.repeat(np.arange(3), 8)  # ImageFolder order: class0, class1, class2
    n = len(labels)
    im2cluster = labels.copy()  # k=3 is perfect; k=5 splits classes
    im2cluster5 = labels * 2 - (np.arange(n) % 2) * (labels > 0)
    levels = [
        Granularity(
            k,
            torch.from_numpy(a),
            torch.nn.functional.normalize(torch.randn(k, 4), dim=1),
            torch.rand(k) + 0.1,
            {"objective": 0.5},
        )
        for k, a in ((3, im2cluster), (5, im2cluster5))
    ]
    path = tmp_path / "epoch_0003.pth"
    torch.save(ClusterResult(3, levels).state_dict(), path)
    out_dir = tmp_path / "out"
    argv = [
        str(path),
        "--labels-from",
        str(tmp_path / "train"),
        "--out-dir",
        str(out_dir),
        "--grid-clusters",
        "2",
        "--grid-members",
        "4",
    ]
    load_tool("inspect_clusters").main(argv)  # in-process: the imports are shared with the test session
    out = capsys.readouterr().out
    assert "NMI 1.0000" in out and "purity 1.0000" in out
    assert "k=5: 5 non-empty clusters" in out
    for k in (3, 5):
        for kind in ("stats", "grid"):
            png = out_dir / f"epoch_0003_k{k}_{kind}.png"
            assert png.is_file() and png.stat().st_size > 0
            assert str(png) in out


def _checkpoint(path: Path, config_key: str, image_size: int = 16) -> Path:
    """A checkpoint of a tiny model whose configuration is stored typed (``config``) or flat (old ``args``)."""
    torch.manual_seed(0)
    model = tiny_model()
    cfg = parse_config(["--arch", "resnet18", "--low-dim", "8", "--pcl-r", "10", "--image-size", str(image_size)])
    flat = {"arch": "resnet18", "stem": "imagenet", "low_dim": 8, "pcl_r": 10, "moco_m": 0.9, "mlp": True}
    stored = to_dict(cfg) if config_key == "config" else {**flat, "cluster_head": "none", "image_size": image_size}
    torch.save({"model": model.state_dict(), "epoch": 3, config_key: stored}, path)
    return path


def test_knn_eval_reads_new_and_old_checkpoints(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    knn_eval = load_tool("knn_eval")
    printed = []
    for key in ("config", "args"):
        ckpt = _checkpoint(tmp_path / f"{key}.pth", key)
        monkeypatch.setattr(sys, "argv", ["knn_eval.py", str(ckpt), "--data", str(tiny_data), "-j", "0"])
        assert knn_eval.main() == 0
        printed.append(capsys.readouterr().out.strip().splitlines())
    for source, table, *reference in printed:  # the source line, the kNN row, then the untrained reference's
        assert "(epoch 3)" in source and table.startswith("kNN top-1 ")
        assert reference[0].startswith("against the untrained reference") and "kNN top-1 (%)" in reference[1]
    assert printed[0][1] == printed[1][1]  # the same weights, the same figure


def test_checkpoint_without_config_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, exported)  # what tools/export_backbone.py writes
    for tool, argv in (
        ("export_backbone", [str(exported), str(tmp_path / "out.pth")]),
        ("knn_eval", [str(exported)]),
    ):
        monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
        assert load_tool(tool).main() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {exported} holds no training configuration (not a main_pcl.py checkpoint?)"]
    assert not (tmp_path / "out.pth").exists()


def test_knn_and_linear_eval_take_a_val_set_of_their_own(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    ckpt = _checkpoint(tmp_path / "c.pth", "config")
    copy = shutil.copytree(tiny_data / "test", tmp_path / "copy")  # the same images as DATA's own test split
    figures = {}
    swapped = shutil.copytree(tiny_data / "test", tmp_path / "swapped")  # two classes' images under each other's name
    a, b = sorted(p.name for p in swapped.iterdir())[:2]
    (swapped / a).rename(swapped / "tmp")
    (swapped / b).rename(swapped / a)
    (swapped / "tmp").rename(swapped / b)
    for name, extra in (("own", []), ("copy", ["--val", str(copy)]), ("swapped", ["--val", str(swapped)])):
        argv = ["knn_eval.py", str(ckpt), "--data", str(tiny_data), "-j", "0", *extra]
        monkeypatch.setattr(sys, "argv", argv)
        assert load_tool("knn_eval").main() == 0
        rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("kNN top-1 ")]
        figures[name] = rows[0].split("%")[0]  # the encoder's own row (the untrained reference's lines follow)
    assert figures["own"] == figures["copy"] != figures["swapped"]
    out = tmp_path / "lin.json"
    argv = ["linear_eval.py", str(ckpt), "--data", str(tiny_data), "-j", "0", "--val", str(swapped)]
    monkeypatch.setattr(sys, "argv", [*argv, "--max-iter", "5", "--wd-grid", "0.1", "--out", str(out)])
    assert load_tool("linear_eval").main() == 0
    written = json.loads(out.read_text())
    assert written["settings"]["val"] == str(swapped) and written["settings"]["data_identity"]["count"] == 48
    capsys.readouterr()
    for tool in ("knn_eval", "linear_eval"):
        monkeypatch.setattr(sys, "argv", [f"{tool}.py", str(ckpt), "--data", str(tiny_data), "--val", "/nope"])
        assert load_tool(tool).main() == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "/nope" in err[0], err
