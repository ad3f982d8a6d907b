"""``pcl.data.synthetic`` and ``tools/make_synthetic.py``: the hard image sets of the collapse tests and the recipe
search (layout, counts, what makes them hard), and the tool's error lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pcl.data.synthetic import PALETTE, write_low_detail, write_near_duplicates
from pcl.utils.cli import pythonpath_env
from tests.helpers import ROOT


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_low_detail_classes_are_their_colour_and_images_differ_only_faintly(tmp_path: Path) -> None:
    root = write_low_detail(tmp_path / "train", per_class=4, classes=10, size=32)
    assert sorted(p.name for p in root.iterdir()) == sorted(f"class{c}" for c in range(10))
    for c in range(10):
        files = sorted((root / f"class{c}").glob("*.jpg"))
        imgs = [_pixels(f) for f in files]
        assert len(files) == 4 and imgs[0].shape == (32, 32, 3)
        mean = np.mean([im.reshape(-1, 3).mean(0) for im in imgs], axis=0)
        assert np.abs(mean - np.asarray(PALETTE[c])).max() < 12  # the class colour, give or take the blob
        assert 0 < np.abs(imgs[0] - imgs[1]).max() <= 70  # different images, faintly so (blob of tint <= 30)
    with pytest.raises(ValueError, match=r"classes must be in 1\.\.10"):
        write_low_detail(tmp_path / "x", per_class=1, classes=11)


def test_near_duplicates_are_all_the_same_picture_but_for_noise(tmp_path: Path) -> None:
    root = write_near_duplicates(tmp_path / "dup", count=6, size=16)
    imgs = [_pixels(p) for p in sorted(root.glob("*.jpg"))]
    assert len(imgs) == 6 and not any(p.is_dir() for p in root.iterdir())  # one unlabeled folder
    assert all(0 < np.abs(a - imgs[0]).mean() < 6 for a in imgs[1:])
    other = _pixels(sorted(write_near_duplicates(tmp_path / "other", 1, 16, seed=1).glob("*.jpg"))[0])
    assert np.abs(other - imgs[0]).mean() > 40  # another seed: another picture


def _tool(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "make_synthetic.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env(ROOT), timeout=120)


def test_the_tool_writes_train_and_test_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "set"
    r = _tool(str(out), "--classes", "2", "--train-per-class", "3", "--test-per-class", "1", "--size", "16")
    assert r.returncode == 0, r.stderr
    assert len(list((out / "train").rglob("*.jpg"))) == 6 and len(list((out / "test").rglob("*.jpg"))) == 2
    for args in ([str(out)], [str(tmp_path / "n"), "--classes", "11"], [str(tmp_path / "m"), "--size", "4"]):
        r = _tool(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "not empty" in _tool(str(out)).stderr and not (tmp_path / "n").exists()


def test_less_detail_means_images_of_a_class_closer_together(tmp_path: Path) -> None:
    def spread(detail: float) -> float:
        root = write_low_detail(tmp_path / f"d{detail}", per_class=6, classes=1, size=32, detail=detail)
        imgs = np.stack([_pixels(p) for p in sorted((root / "class0").glob("*.jpg"))])
        return float(imgs.std(axis=0).mean())

    assert spread(8.0) < 0.5 * spread(30.0)
