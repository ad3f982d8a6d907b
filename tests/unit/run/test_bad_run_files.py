"""Wrong-kind run files are one-line errors naming the file and what was expected (issue 20, defects 5 and 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pcl.eval.pretrained import from_exported
from pcl.run.checkpoint import load_checkpoint
from pcl.run.curves import plot_curves
from pcl.run.metrics import read_run_record
from pcl.utils.errors import PCLError


def test_resume_from_a_directory_says_so_and_names_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(PCLError, match=rf"checkpoint {tmp_path} is a directory; expected a \.pth file such as "):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pth").write_bytes(b"")
    with pytest.raises(PCLError, match=rf"is a directory; expected {tmp_path}/checkpoints/last\.pth$"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("doc", [[1, 2], {"runs": []}, {"epochs": [{"loss": 1.0}]}, {"epochs": "x"}, 3])
def test_valid_json_that_is_not_a_run_record_is_named(tmp_path: Path, doc: object) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PCLError, match=rf"^{path} is not a run record: expected main_pcl\.py's metrics\.json"):
        read_run_record(path)


def test_plot_of_a_tag_no_run_has_names_the_tags_that_exist(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    record = {"epochs": [{"epoch": 0, "epoch/loss": 2.0, "eval/knn_top1": 40.0}]}
    (run / "metrics.json").write_text(json.dumps(record))
    out = tmp_path / "curves.png"
    with pytest.raises(PCLError, match=r"no run has the tag\(s\) nope/x; tags that exist: epoch/loss, eval/knn_top1$"):
        plot_curves({"run": [run]}, ["epoch/loss", "nope/x"], out)
    assert not list(tmp_path.glob("*.png"))  # no empty picture
    assert plot_curves({"run": [run]}, ["epoch/loss"], out) == [out] and out.is_file()


def test_a_training_checkpoint_given_as_exported_backbone_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "rng": np.random.get_state()}, path)
    with pytest.raises(PCLError) as e:
        from_exported(path, "resnet18", None, 32)
    assert str(e.value) == (
        f"{path} is not a backbone state_dict (tools/export_backbone.py output); give a training checkpoint as RUN "
        "(the file or its run directory)"
    )
