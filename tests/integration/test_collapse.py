"""The collapse detector on data built to fail (issue 26): near-duplicate images (the instance task cannot be learnt:
InfoNCE at chance with spread embeddings, the partial collapse the old rule missed), low-detail images at a too-high
lr (a full collapse); a healthy tiny run stays silent; the advice never names the optimizer in use. Also the feature
map in TensorBoard, and the end-of-run summary of an unlabeled run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from pcl import cli
from pcl.train.health import COLLAPSE_EXIT, STD_RATIO_MIN, HealthPlan
from tests.helpers import TINY_ARGS, make_low_detail_folder, make_near_duplicates, scalars

STEPS = 48 // 8  # steps per epoch of the tiny runs
PLAN = HealthPlan.for_schedule(STEPS, print_freq=1)  # grace 10, window 10: judged from step 19
MOCO4 = [*TINY_ARGS, "--epochs", "4", "--warmup-epochs", "4", "--knn-freq", "0", "--feature-map-freq", "0"]


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning:") and "Remedies" in ln]


@pytest.fixture(scope="module")
def duplicates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_near_duplicates(tmp_path_factory.mktemp("dup") / "images", 48)


def test_near_duplicates_are_reported_as_not_learning_at_the_stated_step_and_stopped(
    duplicates: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """InfoNCE at chance from the start, embeddings spread (std ratio far above 0.05): one warning at step
    grace + window - 1 = 19 (epoch 3 of 6-step epochs), with the figures and advice for AdamW's defaults."""
    argv = [str(duplicates), *MOCO4, "--exp-dir", str(tmp_path), "--stop-on-collapse"]
    assert cli.main(argv) == COLLAPSE_EXIT
    err = capsys.readouterr().err
    (line,) = _warnings(err)
    assert f"at step {PLAN.latest - 1} (epoch {(PLAN.latest - 1) // STEPS} " in line, line
    assert re.search(r"InfoNCE averaged \d\.\d{3} over the last 10 steps, \d\.\d{3} (below|above) its chance", line)
    assert f"chance level {math.log(17):.3f}" in line and "acc_inst " in line and "17 candidates: 5.88 %" in line
    assert "now lr 0.001, lr warmup 1 epoch, batch 8" in line and "--optimizer sgd-cos" in line
    assert "--optimizer adamw" not in line and "adamw" not in line
    assert "stopped: finite collapse" in err and "Traceback" not in err
    ratio = [v for _, v in scalars(tmp_path)["health/std_ratio"]]
    assert min(ratio) > 2 * STD_RATIO_MIN  # a partial collapse: the spread stays (the old rule never fired)
    gap = dict(scalars(tmp_path)["health/chance_gap_mean"])
    assert abs(gap[PLAN.latest - 1]) < 0.02 * math.log(17)
    assert torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)["global_step"] == PLAN.latest


def test_a_too_high_lr_on_low_detail_images_is_a_full_collapse_and_the_advice_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """AdamW at lr 0.05 (50 x its default) on flat images: every embedding nearly the same point within two steps
    (acc_inst reads 100 % later: stale queue keys); the warning comes without grace, names the full collapse,
    quotes lr 0.05 and suggests another optimizer than the one in use."""
    data = make_low_detail_folder(tmp_path / "data" / "train", per_class=16).parent
    make_low_detail_folder(data / "test", per_class=4, seed=1)
    argv = [str(data), *MOCO4, "--lr", "0.05", "--exp-dir", str(tmp_path / "run")]
    assert cli.main([*argv, "--stop-on-collapse"]) == COLLAPSE_EXIT
    (line,) = _warnings(capsys.readouterr().err)
    step = int(re.search(r"at step (\d+) ", line).group(1))
    assert "full collapse" in line and step < PLAN.grace, line
    assert "now lr 0.05, lr warmup 1 epoch, batch 8" in line and "--lr 0.025;" in line
    assert "--optimizer sgd-cos --lr" in line and "adamw" not in line
    ratio = dict(scalars(tmp_path / "run")["health/std_ratio"])
    assert all(ratio[s] < STD_RATIO_MIN for s in range(step - 4, step + 1))


def test_a_healthy_tiny_run_never_warns_and_sums_up(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """Weak augmentation (crops of 90-100 %, no colour change): the instance task is learnt, far from chance
    after the grace steps; no warning in 4 epochs, and the end-of-run summary says so."""
    weak = ["--crop-min", "0.9", "--color-jitter-prob", "0", "--grayscale-prob", "0"]
    argv = [str(tiny_data), *MOCO4, *weak, "--exp-dir", str(tmp_path), "--stop-on-collapse"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert not _warnings(err) and "collapse" not in err
    gap = dict(scalars(tmp_path)["health/chance_gap_mean"])
    assert min(gap[s] for s in range(PLAN.latest - 1, 4 * STEPS)) > 0.02 * math.log(17)
    summary = [ln for ln in out.splitlines() if ln.startswith(("summary:", "health:"))]
    assert summary[0].startswith("summary: epoch 3 (of 4): loss ") and "acc_inst " in summary[0]
    assert summary[1].startswith("health: no collapse sign; InfoNCE averaged ")


def test_feature_map_in_tensorboard_without_changing_training(
    duplicates: Path, tiny_data: Path, tmp_path: Path, capsys
) -> None:
    """``--feature-map-freq 1``: one ``features/map`` image per epoch, labelled (classes) and unlabeled (k-means
    clusters with thumbnails); the losses are those of the same run without the map. Unlabeled runs end with a
    summary too (PCL: acc_proto after its E-step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pcl.analysis.render import DPI, MAP_SIZE

    base = [*TINY_ARGS, "--epochs", "1", "--warmup-epochs", "1", "--knn-freq", "0"]
    for name, data, extra in (("on", tiny_data, ["--feature-map-freq", "1"]), ("off", tiny_data, [])):
        assert cli.main([str(data), *base, *extra, "--exp-dir", str(tmp_path / name)]) == 0
    assert scalars(tmp_path / "on")["train/loss"] == scalars(tmp_path / "off")["train/loss"]
    unl = [str(duplicates), *TINY_ARGS, "--feature-map-freq", "1", "--exp-dir", str(tmp_path / "unl")]
    assert cli.main(unl) == 0  # PCL, 2 epochs, E-step at epoch 1
    out = capsys.readouterr().out
    for run, steps in (("on", [0]), ("unl", [0, 1])):
        acc = EventAccumulator(str(tmp_path / run / "tb"), size_guidance={"images": 0})
        acc.Reload()
        images = acc.Images("features/map")
        assert [i.step for i in images] == steps
        assert (images[0].width, images[0].height) == (round(MAP_SIZE[0] * DPI), round(MAP_SIZE[1] * DPI))
    assert "time/feature_map_seconds" in scalars(tmp_path / "on")
    summary = next(ln for ln in out.splitlines() if ln.startswith("summary: epoch 1 (of 2)"))
    assert "acc_inst " in summary and "acc_proto " in summary and "knn" not in summary
