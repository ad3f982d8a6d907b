"""SwAV and DINO end to end on tiny data: 2-epoch runs that log their named terms, a SIGTERM mid-epoch and a resume
bit-identical to the uninterrupted run (schedules, queue, teacher and centre included), a run on an unlabeled
folder, tools/evaluate.py and tools/export_backbone.py on their checkpoints, one ``error:`` line for each bad
setting, and a tiny suite of the four methods with a summary row per method."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from pcl import cli
from tests.helpers import TINY_ARGS, load_tool, scalars

STEPS_PER_EPOCH = 48 // 8
METHOD_ARGS = {
    # a queue used from epoch 0 (full after 2 steps): the resume must restore it
    "swav": ["--method", "swav", "--swav-prototypes", "10", "--swav-queue-length", "16",
             "--swav-queue-start-epoch", "0"],
    # the teacher temperature changes between the two epochs; the last layer is frozen in epoch 0
    "dino": ["--method", "dino", "--dino-out-dim", "32", "--dino-hidden-dim", "32", "--dino-bottleneck-dim", "16",
             "--dino-warmup-teacher-temp-epochs", "2"],
}  # fmt: skip
TERMS = {"swav": ("loss_swav", "acc_swav"), "dino": ("loss_dino", "teacher_entropy", "kl_centre", "acc_dino")}
PREFIXES = {"swav": ("encoder.backbone.", "encoder.backbone."), "dino": ("student.backbone.", "teacher.backbone.")}
KILL_AT = {"swav": 2, "dino": STEPS_PER_EPOCH + 2}  # global step after which SIGTERM arrives


def run(data: Path, exp_dir: Path, method: str, *extra: str) -> int:
    return cli.main([str(data), *TINY_ARGS, *METHOD_ARGS[method], "--exp-dir", str(exp_dir), *extra])


@pytest.fixture(scope="module", params=["swav", "dino"])
def full_run(request: pytest.FixtureRequest, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp(request.param)
    assert run(tiny_data, exp, request.param) == 0
    return exp


def method_of(exp: Path) -> str:
    return json.loads((exp / "config.json").read_text())["method"]


def test_a_run_logs_its_terms_and_the_losses_move(full_run: Path) -> None:
    method = method_of(full_run)
    epochs = json.loads((full_run / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 2
    for name in TERMS[method]:
        assert all(f"epoch/{name}" in e for e in epochs), name
    loss = [e[f"epoch/{TERMS[method][0]}"] for e in epochs]
    assert loss[1] < loss[0]  # the objective is trained
    tags = scalars(full_run)
    assert {f"train/{n}" for n in TERMS[method]} <= set(tags)
    assert sorted({s for s, _ in tags["train/loss"]}) == list(range(2 * STEPS_PER_EPOCH))
    if method == "dino":  # --clip-grad 3.0 per tensor: the method's recipe, recorded in the run's configuration
        step = json.loads((full_run / "config.json").read_text())["step"]
        assert (step["clip_grad"], step["clip_mode"]) == (3.0, "tensor")


def test_sigterm_mid_epoch_and_resume_is_identical_to_the_uninterrupted_run(
    full_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from pcl.train.engine import Trainer

    method, log_step = method_of(full_run), Trainer._log_step

    def log_then_signal(self: Trainer, step: object) -> None:
        log_step(self, step)
        if self.state.global_step == KILL_AT[method]:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "_log_step", log_then_signal)
    assert run(tiny_data, tmp_path, method) == 128 + signal.SIGTERM
    assert "Traceback" not in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert ckpt["global_step"] == KILL_AT[method] + 1 and ckpt["step_in_epoch"] == 3
    monkeypatch.setattr(Trainer, "_log_step", log_step)
    assert run(tiny_data, tmp_path, method, "--resume", "auto") == 0
    a = torch.load(full_run / "checkpoints" / "last.pth", weights_only=False)
    b = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=False)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 2 * STEPS_PER_EPOCH)
    assert a["model"].keys() == b["model"].keys()
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name  # weights, prototypes, queue, teacher, centre
    for ga, gb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(ga[k], gb[k]) for k in ga)


def test_evaluate_and_export_read_the_methods_backbones(
    full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    method = method_of(full_run)
    ckpt = torch.load(full_run / "checkpoints" / "last.pth", weights_only=False)
    query, key = PREFIXES[method]
    out = tmp_path / "backbone.pth"
    monkeypatch.setattr(sys, "argv", ["export_backbone.py", str(full_run / "checkpoints" / "last.pth"), str(out)])
    assert load_tool("export_backbone").main() == 0
    exported = torch.load(out, weights_only=False)
    exported = exported.get("state_dict", exported)
    want = {k.removeprefix(query): v for k, v in ckpt["model"].items() if k.startswith(query)}
    assert want and exported.keys() == want.keys()
    assert all(torch.equal(exported[k], want[k]) for k in want)
    evaluate = load_tool("evaluate")
    for encoder, prefix in (("query", query), ("key", key)):
        dest = tmp_path / f"eval_{encoder}.json"
        argv = [str(full_run), "--protocols", "knn", "--encoder", encoder, "--device", "cpu", "-j", "0"]
        assert evaluate.main([*argv, "--out", str(dest)]) == 0
        assert json.loads(dest.read_text())["knn_top1"] is not None, prefix


@pytest.mark.parametrize("method", ["swav", "dino"])
def test_an_unlabeled_folder_trains(method: str, tiny_data: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((tiny_data / "train").rglob("*.jpg")):
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    assert run(flat, tmp_path / "run", method, "--epochs", "1") == 0
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 1 and f"epoch/{TERMS[method][0]}" in epochs[0]


@pytest.mark.parametrize(
    ("method", "flags", "line"),
    [
        ("swav", ["--swav-prototypes", "1"], "--swav-prototypes"),
        ("swav", ["--swav-epsilon", "0"], "--swav-epsilon"),
        ("swav", ["--swav-queue-length", "4"], "--swav-queue-length 4 is shorter than one batch"),
        ("swav", ["--swav-queue-length", "64"], "--swav-queue-length 64 is larger than the 48 training images"),
        ("dino", ["--dino-out-dim", "1"], "--dino-out-dim"),
        ("dino", ["--dino-teacher-temp", "0"], "--dino-teacher-temp"),
        ("dino", ["--dino-center-momentum", "1"], "--dino-center-momentum"),
    ],
)
def test_a_bad_setting_is_one_error_line(
    method: str, flags: list[str], line: str, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(tiny_data, tmp_path, method, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and line in err[0], err
    assert not (tmp_path / "checkpoints").exists()



FOUR_METHODS = """
[[runs]]
name = "moco-v2"
flags = { epochs = 1, warmup-epochs = 1 }
[[runs]]
name = "pcl"
flags = { epochs = 1, warmup-epochs = 0 }
[[runs]]
name = "swav"
flags = { epochs = 1, method = "swav", swav-prototypes = 10 }
[[runs]]
name = "dino"
flags = { epochs = 1, method = "dino", dino-out-dim = 32, dino-hidden-dim = 32, dino-bottleneck-dim = 16 }
"""


def test_a_suite_of_the_four_methods_has_a_row_per_method(tiny_data: Path, tmp_path: Path) -> None:
    import csv

    from tests.helpers import load_experiments, write_suite

    suite = write_suite(tmp_path / "four.toml", FOUR_METHODS)
    columns = 'columns = ["epoch/loss_swav", "epoch/loss_dino"]\n'
    suite.write_text(suite.read_text().replace("seeds = 1\n", "seeds = 1\n" + columns))
    out = tmp_path / "out" / "four"
    assert load_experiments().main([str(suite), str(tiny_data), "--out", str(tmp_path / "out")]) == 0
    rows = {r["run"]: r for r in csv.DictReader((out / "results.csv").read_text().splitlines())}
    assert list(rows) == ["moco-v2", "pcl", "swav", "dino"]
    for name, row in rows.items():
        method = json.loads((out / name / "seed0" / "config.json").read_text())["method"]
        assert row["seeds_done"] == "1" and method == {"moco-v2": "pcl"}.get(name, name)  # as baseline.toml's
        assert float(row["sec_per_epoch"]) > 0 and float(row["peak_rss_mib"]) > 0  # the cost columns
    assert float(rows["swav"]["epoch_loss_swav_mean"]) > 0 and rows["swav"]["epoch_loss_dino_mean"] == ""
    assert float(rows["dino"]["epoch_loss_dino_mean"]) > 0 and rows["pcl"]["epoch_loss_swav_mean"] == ""
    md = (out / "results.md").read_text()
    assert all(f"| {name} | 1/1 |" in md for name in rows)
