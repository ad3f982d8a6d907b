"""Picture computations (gallery rows, retrieval, subsample, 2-D map) and the figures' pixel sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcl.analysis import render
from pcl.analysis.embedding import GalleryRow, embed_2d, gallery_rows, pick_clusters, pick_queries, retrieve, subsample


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_pick_clusters_by_size_then_by_concentration() -> None:
    im2cluster = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 4, 4])  # sizes 3, 2, 0, 4, 2
    concentration = np.array([0.3, 0.1, 0.05, 0.2, 0.1])
    assert pick_clusters(im2cluster, concentration, 3, "size").tolist() == [3, 0, 1]  # 1 before 4: same size, lower id
    # smallest phi first; cluster 2 is empty and never shown; 1 and 4 tie on phi and size -> id order
    assert pick_clusters(im2cluster, concentration, 5, "concentration").tolist() == [1, 4, 3, 0]


def test_gallery_rows_are_the_nearest_members_by_hand() -> None:
    # 2-D unit features; prototype 0 points along +x (given unnormalised), prototype 1 along +y
    angles = np.array([0.0, 0.3, -0.1, 0.6, 1.5, 1.2, 1.7])
    feats = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    im2cluster = np.array([0, 0, 0, 0, 1, 1, 1])
    centroids = np.array([[3.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    concentration = np.array([0.2, 0.1], dtype=np.float32)
    rows = gallery_rows([(np.arange(7), feats)], im2cluster, centroids, concentration, n_clusters=2, n_members=3)
    assert [r.cluster for r in rows] == [0, 1] and [r.size for r in rows] == [4, 3]
    assert rows[0].members.tolist() == [0, 2, 1]  # angles 0, 0.1, 0.3 from the x axis
    assert rows[1].members.tolist() == [4, 6, 5]  # angles 0.07, 0.13, 0.37 from the y axis
    np.testing.assert_allclose(rows[0].distances, 2 * np.sin(np.array([0.0, 0.1, 0.3]) / 2), atol=1e-6)
    assert rows[1].phi == pytest.approx(0.1) and rows[0].k == 2
    # the same rows from shards in another order (the E-step's streamed store)
    perm = np.array([5, 3, 0, 6, 2, 4, 1])
    chunks = [(perm[:3], feats[perm[:3]]), (perm[3:], feats[perm[3:]])]
    again = gallery_rows(chunks, im2cluster, centroids, concentration, n_clusters=2, n_members=3)
    assert [r.members.tolist() for r in again] == [r.members.tolist() for r in rows]


def test_gallery_rows_of_one_ranks_share_use_its_rows_only() -> None:
    feats = _unit(np.random.default_rng(0).normal(size=(10, 4))).astype(np.float32)
    im2cluster = np.zeros(10, dtype=np.int64)
    rows = gallery_rows([(np.arange(0, 10, 2), feats[::2])], im2cluster, feats[:1], np.ones(1), 1, 10)
    assert rows[0].size == 10 and sorted(rows[0].members.tolist()) == [0, 2, 4, 6, 8]
    assert rows[0].members[0] == 0  # the prototype is row 0 itself


def test_retrieve_matches_brute_force_and_leaves_the_query_out() -> None:
    bank = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    queries = np.array([3, 17])
    idx, sims = retrieve(bank, bank[queries] * 7.0, 4, queries)  # the scale of a query does not matter
    u = _unit(bank)
    for q, row, srow in zip(queries, idx, sims, strict=True):
        cos = u @ u[q]
        cos[q] = -np.inf
        assert row.tolist() == np.argsort(-cos, kind="stable")[:4].tolist()
        np.testing.assert_allclose(srow, cos[row], rtol=1e-5)
    outside, _ = retrieve(bank, bank[:1], 30, np.array([-1]))  # a query from outside the bank keeps all rows
    assert outside.shape == (1, 30) and outside[0, 0] == 0


def test_subsample_and_queries_are_seeded() -> None:
    assert subsample(10, 20, 0).tolist() == list(range(10))
    a, b = subsample(1000, 50, 3), subsample(1000, 50, 3)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()
    assert subsample(1000, 50, 4).tolist() != a.tolist()
    q = pick_queries(100, 6, 0)
    assert len(set(q.tolist())) == 6 and q.tolist() == pick_queries(100, 6, 0).tolist()
    assert sorted(pick_queries(3, 6, 0).tolist()) == [0, 1, 2]


def test_tsne_map_is_seeded_and_separates_two_blobs() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(15, 8)) * 0.05 + 5, rng.normal(size=(15, 8)) * 0.05 - 5])
    x[:15, 0] += 10  # two directions, so that cosine tells them apart
    xy, method = embed_2d(x, "tsne", seed=0)
    assert method == "tsne" and xy.shape == (30, 2)
    np.testing.assert_allclose(xy, embed_2d(x, "tsne", seed=0)[0])
    within = np.linalg.norm(xy[:15] - xy[:15].mean(0), axis=1).max()
    assert np.linalg.norm(xy[:15].mean(0) - xy[15:].mean(0)) > 2 * within
    with pytest.raises(ValueError, match="unknown 2-D method"):
        embed_2d(x, "pca")


def test_figures_have_their_computed_pixel_sizes(tmp_path: Path) -> None:
    thumb = lambda i: np.full((16, 16, 3), 40 * i, dtype=np.uint8)  # noqa: E731
    rows = [GalleryRow(5, c, 10 - c, 0.2, np.arange(4 - c), np.zeros(4 - c)) for c in range(3)]
    png = render.save(render.gallery(rows, thumb, 4, "title"), tmp_path / "g.png")
    # 1.3 in label + 4 x 0.9 in + 0.1 in wide, 0.45 in title + 3 x 0.9 in + 0.1 in high, at 100 dpi
    assert Image.open(png).size == render.gallery_size(3, 4) == (500, 325)
    fig = render.retrieval(np.array([0, 1]), np.array([[1, 2], [0, 2]]), np.ones((2, 2)), thumb, "t", str)
    png = render.save(fig, tmp_path / "r.png")
    assert Image.open(png).size == render.retrieval_size(2, 2) == (315, 291)  # 0.1 + 3 x 0.9 + 0.25 gap + 0.1 wide
    fig = render.feature_map(np.zeros((4, 2)), np.array([0, 1, 1, 0]), ["a", "b"], "map", "class")
    assert Image.open(render.save(fig, tmp_path / "m.png")).size == (900, 700)
    assert render.to_array(render.gallery(rows, thumb, 4, "t")).shape == (325, 500, 3)
