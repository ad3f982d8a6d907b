"""tools/visualize.py on tiny runs: labelled, labels dropped, MoCo-only (no clusters), exported backbone, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pcl import cli
from pcl.analysis import render
from pcl.eval.pretrained import backbone_state_dict
from pcl.run.run_dir import RunDir
from tests.helpers import ROOT, TINY_ARGS, load_tool, tool_env

SMALL = ["--max-points", "30", "--clusters", "4", "--members", "5", "--queries", "3", "--top", "4", "-j", "0"]


@pytest.fixture(scope="module")
def vis_run(tiny_data: Path, module_tmp: Path) -> Path:
    """A 2-epoch PCL run (E-step at epoch 1, k = 3, 5) that kept its E-step features and logged its galleries."""
    exp = module_tmp / "run"
    extra = ["--keep-features", "--log-cluster-images", "2"]
    assert cli.main([str(tiny_data), *TINY_ARGS, "--exp-dir", str(exp), *extra]) == 0
    return exp


def test_log_cluster_images_shows_each_granularity_in_tensorboard(vis_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(RunDir(vis_run).tb), size_guidance={"images": 0})
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == ["clusters/k3", "clusters/k5"]
    image = acc.Images("clusters/k5")[0]  # the 2 largest clusters, 8 members per row: one E-step, at epoch 1
    assert (image.step, (image.width, image.height)) == (1, render.gallery_size(2, 8))


def visualize(*argv: str | Path) -> int:
    return load_tool("visualize").main([str(a) for a in argv])


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
        return img.size


def test_labelled_run_writes_three_pictures_and_the_gallery_is_the_nearest_members(
    vis_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pics"
    assert visualize(vis_run, "--out", out, *SMALL) == 0
    info = json.loads((out / "pictures.json").read_text())
    assert info["map"] == {"method": "tsne", "points": 30, "colour_by": "class"}
    assert _png_size(out / "feature_map.png") == (900, 700)
    gallery = info["gallery"]
    assert gallery["epoch"] == 1 and gallery["k"] == 5 and gallery["features"] == "kept E-step features of epoch 1"
    assert _png_size(out / "cluster_gallery.png") == render.gallery_size(len(gallery["rows"]), 5)
    assert _png_size(out / "retrieval.png") == render.retrieval_size(3, 4)
    assert np.array(info["retrieval"]["neighbours"]).shape == (3, 4)
    files = sorted(str(p) for p in Path(info["data"]).joinpath("train").rglob("*.jpg"))  # ImageFolder order
    r = info["retrieval"]
    assert r["query_paths"] == [files[q] for q in r["queries"]]
    assert r["neighbour_paths"] == [[files[i] for i in row] for row in r["neighbours"]]
    assert all(row["member_paths"] == [files[i] for i in row["members"]] for row in gallery["rows"])
    # by hand, on the saved E-step features: each row's members are its cluster's nearest to the prototype
    level = torch.load(RunDir(vis_run).last, weights_only=False)["cluster_result"]["levels"][1]
    im2cluster, centroids = level["im2cluster"].numpy(), level["centroids"].numpy()
    store = RunDir(vis_run).features / "epoch0001"
    feats = np.load(store / "rank0-000000.feat.npy")[np.argsort(np.load(store / "rank0-000000.idx.npy"))]
    sizes = np.bincount(im2cluster, minlength=5)
    expected_clusters = sorted(np.flatnonzero(sizes), key=lambda c: (-sizes[c], c))[:4]
    assert [r["cluster"] for r in gallery["rows"]] == expected_clusters
    for row in gallery["rows"]:
        c = row["cluster"]
        members = np.flatnonzero(im2cluster == c)
        dist = np.linalg.norm(feats[members] - centroids[c] / np.linalg.norm(centroids[c]), axis=1)
        assert row["members"] == members[np.argsort(dist, kind="stable")][:5].tolist()
        assert row["size"] == sizes[c] and row["phi"] == pytest.approx(float(level["density"][c]))
        np.testing.assert_allclose(row["distances"], np.sort(dist)[:5], rtol=1e-5)


def test_data_without_labels_colours_the_map_by_cluster(vis_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    flat = tmp_path / "unlabelled" / "train" / "all"  # one folder: no classes; same image order as the run's
    flat.mkdir(parents=True)
    for img in sorted((tiny_data / "train").rglob("*.jpg")):
        shutil.copy(img, flat / f"{img.parent.name}_{img.name}")
    out = tmp_path / "pics"
    assert visualize(vis_run, "--data", flat.parent.parent, "--out", out, "--granularity", "3", *SMALL) == 0
    info = json.loads((out / "pictures.json").read_text())
    assert info["map"]["colour_by"] == "cluster (k=3)" and info["gallery"]["k"] == 3
    assert _png_size(out / "feature_map.png") == (900, 700)
    assert _png_size(out / "retrieval.png") == render.retrieval_size(3, 4)


def test_method_flag_and_an_unlabeled_map_legend_of_the_largest_clusters(
    vis_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--method tsne`` is the map's projection (``--method umap`` without umap-learn: one error line); an
    unlabeled map coloured by the k = 5 clusters draws every cluster with a legend entry (no 40 hues)."""
    from pcl.analysis.embedding import umap_available

    out = tmp_path / "pics"
    assert (
        visualize(vis_run, "--out", out, "--pictures", "map", "--method", "tsne", "--color-by", "cluster", *SMALL) == 0
    )
    info = json.loads((out / "pictures.json").read_text())
    assert info["map"] == {"method": "tsne", "points": 30, "colour_by": "cluster (k=5)"}
    if not umap_available():
        assert visualize(vis_run, "--out", out, "--pictures", "map", "--method", "umap", *SMALL) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "umap-learn" in err[0]


def test_map_of_many_groups_colours_the_largest_and_greys_the_rest() -> None:
    """40 clusters: the 9 largest get a colour, a legend entry with their size and their central image; the other
    31 are one grey "other" entry."""
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(40), np.arange(40, 0, -1))  # cluster j has 40 - j points
    xy = rng.normal(size=(len(ids), 2)) + ids[:, None]
    shown = []
    fig = render.feature_map(
        xy, ids, None, "t", "cluster", lambda i: shown.append(i) or np.zeros((8, 8, 3), np.uint8), np.arange(len(ids))
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"#{j} ({40 - j})" for j in range(9)] + [f"other: 31 more, {int((ids >= 9).sum())} points"]
    assert sorted(ids[shown]) == list(range(9))  # one thumbnail per coloured cluster, from that cluster
    assert render.to_array(fig).shape == (700, 900, 3)


def test_without_kept_features_the_gallery_ranks_with_the_checkpoint(vis_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(RunDir(vis_run).last, run / "checkpoints" / "last.pth")
    out = tmp_path / "pics"
    assert visualize(run, "--out", out, "--pictures", "gallery", "--gallery-sort", "concentration", *SMALL) == 0
    info = json.loads((out / "pictures.json").read_text())
    assert sorted(p.name for p in out.glob("*.png")) == ["cluster_gallery.png"]
    # the checkpoint holds epoch = 2 (two finished): the encoder after epoch 1, as the E-step at the start of
    # epoch 1 is "epoch 1" in the title: one numbering (0-based, as the training's "epoch N:" lines)
    assert info["gallery"]["features"].startswith("momentum encoder after epoch 1 (the checkpoint)")
    assert "not the E-step's at the start of epoch 1" in info["gallery"]["features"]
    level = torch.load(run / "checkpoints" / "last.pth", weights_only=False)["cluster_result"]["levels"][1]
    phis = [row["phi"] for row in info["gallery"]["rows"]]
    assert phis == sorted(phis)  # most concentrated first
    for row in info["gallery"]["rows"]:
        assert (level["im2cluster"].numpy()[row["members"]] == row["cluster"]).all()
        assert row["distances"] == sorted(row["distances"])


@pytest.fixture(scope="module")
def moco_run(vis_run: Path, module_tmp: Path) -> Path:
    """The tiny run's last checkpoint as a MoCo v2 run: no cluster result, warmup = all epochs."""
    ckpt = torch.load(RunDir(vis_run).last, weights_only=False)
    ckpt["cluster_result"] = None
    ckpt["config"]["train"]["warmup_epochs"] = ckpt["config"]["train"]["epochs"]
    run = RunDir(module_tmp / "moco")
    run.checkpoints.mkdir(parents=True)
    torch.save(ckpt, run.last)
    return run.root


def test_moco_run_draws_map_and_retrieval_only(
    moco_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pics"
    assert visualize(moco_run, "--out", out, *SMALL) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["feature_map.png", "retrieval.png"]
    assert "no cluster result (MoCo v2 run or no E-step yet): feature map and retrieval only" in capsys.readouterr().out
    assert visualize(moco_run, "--out", out, "--pictures", "gallery") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no cluster result" in err[0]


def test_exported_backbone_gives_the_checkpoints_neighbours(
    vis_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    exported = tmp_path / "backbone.pth"
    torch.save(backbone_state_dict(torch.load(RunDir(vis_run).last, weights_only=False)), exported)
    a, b = tmp_path / "a", tmp_path / "b"
    assert visualize(vis_run, "--out", a, "--pictures", "retrieval", *SMALL) == 0
    assert visualize("--exported", exported, "--data", tiny_data, "--image-size", "16", "--out", b, *SMALL) == 0
    assert sorted(p.name for p in b.glob("*.png")) == ["feature_map.png", "retrieval.png"]
    ra, rb = (json.loads((d / "pictures.json").read_text())["retrieval"] for d in (a, b))
    assert ra["neighbours"] == rb["neighbours"]
    np.testing.assert_allclose(ra["similarities"], rb["similarities"], rtol=1e-4)


def test_query_image_given_by_path(vis_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    query = sorted((tiny_data / "train" / "class1").glob("*.jpg"))[0]
    out = tmp_path / "pics"
    assert visualize(vis_run, "--out", out, "--pictures", "retrieval", "--query", query, *SMALL) == 0
    info = json.loads((out / "pictures.json").read_text())["retrieval"]
    assert info["queries"] == [str(query)] and 16 not in info["neighbours"][0]  # itself (index 16) left out
    assert _png_size(out / "retrieval.png") == render.retrieval_size(1, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{empty}"], "not a started training run"),
        (["{tmp}/missing"], "does not exist"),
        (["{run}", "--granularity", "7"], "--granularity 7: the run's clusters have k = 3, 5"),
        (["{run}", "--pictures", "map,movie"], "expected a comma list of map, gallery, retrieval"),
        (["{run}", "--max-points", "0"], "argument --max-points: must be positive, got 0"),
        (["--exported", "{tmp}/b.pth"], "--exported without a run directory needs --data"),
        (["{run}", "--query", "{tmp}/nope.jpg"], "--query"),
    ],
)
def test_bad_input_is_one_error_line(
    vis_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", tmp=tmp_path, run=vis_run) for a in args]
    assert visualize(*argv, "--out", tmp_path / "out", "-j", "0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_command_line_error_has_no_traceback(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "visualize.py"), str(tmp_path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=300,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: {tmp_path} has no checkpoints/last.pth: not a started training run"
    ]
