"""Bad input: one clear line on stderr, exit code 2, before training starts (no traceback)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pcl import cli
from tests.helpers import ROOT, TINY_ARGS


def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    tmp = None
    if "--exp-dir" not in argv:  # never the default runs/default: a user's `make train` run may live there
        tmp = tempfile.mkdtemp(prefix="pcl-bad-input-")
        argv = [*argv, "--exp-dir", tmp]
    try:
        assert cli.main(argv) == 2
    finally:  # removed, also when the program created nothing in it
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_missing_path(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert "does not exist" in error_line(capsys, [str(tmp_path / "nope"), *TINY_ARGS])


def test_empty_folder_without_train_split(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """A folder without train/ is data too (class folders or unlabeled images): empty, it holds no images."""
    assert "no images found under" in error_line(capsys, [str(tmp_path), *TINY_ARGS])


def test_empty_train_folder(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    assert "no images found" in error_line(capsys, [str(tmp_path), *TINY_ARGS])


def test_folder_without_images(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    assert "no images found" in error_line(capsys, [str(tmp_path), *TINY_ARGS])


@pytest.fixture
def data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def test_corrupt_image_is_named_before_training(capsys: pytest.CaptureFixture, data_copy: Path, tmp_path: Path) -> None:
    bad = data_copy / "train" / "class1" / "0003.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    line = error_line(capsys, [str(data_copy), *TINY_ARGS, "--exp-dir", str(tmp_path / "run")])
    assert "corrupt" in line and str(bad) in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupt_image_met_during_training_names_the_file(
    capsys: pytest.CaptureFixture, data_copy: Path, tmp_path: Path
) -> None:
    bad = data_copy / "train" / "class2" / "0001.jpg"
    bad.write_bytes(b"garbage")
    flags = ["--verify-images", "no", "--cache-images", "no"]  # no up-front decoding at all
    line = error_line(capsys, [str(data_copy), *TINY_ARGS, *flags, "--exp-dir", str(tmp_path / "r")])
    assert str(bad) in line


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--num-cluster", "3,500"], "exceeds the 48 training images"),
        (["--batch-size", "32", "--pcl-r", "16"], "larger than the queue"),
        (["--pcl-r", "64"], "not smaller than the 48 training images"),
        (["--batch-size", "64", "--pcl-r", "100"], "fewer than one batch"),
        (["--bn-splits", "3"], "not divisible by --bn-splits"),
        (["--arch", "resnet1800"], "unknown arch 'resnet1800'; close matches: resnet18, resnet200,"),  # once each
        (["--optimizer", "adamax"], "invalid choice: 'adamax'"),
        (["--num-cluster", "a,b"], "comma-separated integers"),
        (["--num-cluster", "10,,20"], "comma-separated integers"),
        (["--crop-min", "-1"], "--crop-min must be in (0, 1]"),
        (["--color-jitter", "-1"], "--color-jitter must be in [0, 2]"),
        (["--eval-batch-size", "0"], "--eval-batch-size must be positive"),
        (["--grayscale-prob", "1.5"], "--grayscale-prob must be in [0, 1]"),
        (["--lr", "-1"], "--lr must be positive"),
    ],
)
def test_config_that_cannot_work(
    capsys: pytest.CaptureFixture, tiny_data: Path, tmp_path: Path, flags: list[str], needle: str
) -> None:
    assert needle in error_line(capsys, [str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path), *flags])


def test_command_line_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main_pcl.py"), str(tmp_path / "missing"), "--exp-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: data path {tmp_path / 'missing'} does not exist"]
