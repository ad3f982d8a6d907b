"""Every data form trains: the tiny data set copied into each form, 2 epochs with an E-step; unlabeled forms log
no kNN and no cluster metrics; a changed data set refuses to resume; bad data input is one ``error:`` line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from pcl import cli
from pcl.data.sources import resolve_data
from tests.helpers import TINY_ARGS, load_tool


def flatten(src: Path, dst: Path) -> Path:
    """Every image of ``src/<class>/`` in one folder ``dst`` (names made unique by the class)."""
    dst.mkdir(parents=True)
    for p in sorted(src.rglob("*.jpg")):
        shutil.copy(p, dst / f"{p.parent.name}_{p.name}")
    return dst


def make_forms(tiny: Path, root: Path) -> dict[str, list[str]]:
    """``{form: DATA argument and extra flags}`` for each data form, built from the tiny data set."""
    flat = flatten(tiny / "train", root / "flat")
    (flat / "._class0_0000.jpg").write_bytes(b"AppleDouble, not an image")  # hidden: never read
    nested = root / "nested"
    shutil.copytree(tiny / "train" / "class0", nested / "2019" / "a")
    shutil.copytree(tiny / "train" / "class1", nested / "2019" / "b")
    shutil.copytree(tiny / "train" / "class2", nested / "2020")
    shutil.copy(tiny / "test" / "class0" / "0000.jpg", nested / "cover.jpg")
    shutil.copytree(tiny / "train" / "class0", nested / ".Trash-0")
    classes = Path(shutil.copytree(tiny / "train", root / "classes"))
    train = resolve_data(str(classes)).train
    (root / "lists").mkdir()
    txt = root / "lists" / "train.txt"
    txt.write_text("".join(f"../classes/{Path(p).relative_to(classes)}\n" for p in train.paths))
    csv = root / "lists" / "train.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{train.classes[t]}\n" for p, t in train.samples()))
    return {
        "flat": [str(flat)],
        "nested": [str(nested)],
        "classes": [str(classes)],
        "txt": [str(txt)],
        "csv": [str(csv)],
        "classes+val": [str(classes), "--val", str(tiny / "test")],
    }


LABELLED = {"classes", "csv", "classes+val"}
WITH_KNN = {"classes+val"}


@pytest.fixture(scope="module")
def form_runs(tiny_data: Path, module_tmp: Path) -> Callable[[str], tuple[int, str, dict]]:
    """``get(form)``: that form trained for 2 epochs (warmup 1: one E-step), once per module, as
    ``(exit code, stdout, metrics.json)``."""
    forms = make_forms(tiny_data, module_tmp / "forms")
    done: dict[str, tuple[int, str, dict]] = {}

    def get(name: str) -> tuple[int, str, dict]:
        if name not in done:
            exp = module_tmp / "runs" / name
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = cli.main([*forms[name], *TINY_ARGS, "--exp-dir", str(exp)])
            metrics = json.loads((exp / "metrics.json").read_text()) if (exp / "metrics.json").is_file() else {}
            done[name] = (code, buf.getvalue(), metrics)
            if name != "txt":  # ~180 MB of checkpoints each; the txt run is resumed and evaluated below
                shutil.rmtree(exp, ignore_errors=True)
        return done[name]

    return get


@pytest.mark.parametrize("form", ["flat", "nested", "classes", "txt", "csv", "classes+val"])
def test_each_form_trains_two_epochs_with_an_estep(form_runs: Callable, form: str) -> None:
    code, stdout, metrics = form_runs(form)
    assert code == 0, stdout
    epochs = metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert "cluster/k3/objective" in epochs[1] and "epoch/acc_proto" in epochs[1]  # the E-step ran, ProtoNCE on
    keys = set(epochs[0]) | set(epochs[1])
    has_cluster_metrics = any(k.startswith("cluster/") and k.endswith(("/nmi", "/ami", "/purity")) for k in keys)
    assert has_cluster_metrics == (form in LABELLED)
    assert ("eval/knn_top1" in keys) == (form in WITH_KNN)
    if form not in WITH_KNN:
        assert metrics["final"]["knn_top1"] is None


@pytest.mark.parametrize(
    ("form", "line"),
    [
        ("flat", "data: 48 images, unlabeled (images directly in"),
        ("nested", "data: 49 images, unlabeled (images directly in"),
        ("classes", "data: 48 images in 3 classes (3 class folders in"),
        ("txt", "data: 48 images, unlabeled (list"),
        ("csv", "data: 48 images in 3 classes (list"),
        ("classes+val", "eval: 12 images in 3 classes (3 class folders in"),
    ],
)
def test_the_detected_form_is_said_in_one_line(form_runs: Callable, form: str, line: str) -> None:
    stdout = form_runs(form)[1]
    said = [s for s in stdout.splitlines() if s.startswith("data: ")]
    assert len(said) == 1 and line in said[0]
    if form not in LABELLED:
        assert "kNN monitor off: the training data has no labels" in stdout
        assert "cluster metrics (NMI/AMI/purity) off: the training data has no labels" in stdout
    elif form not in WITH_KNN:
        assert "kNN monitor off: no eval set" in stdout


def test_a_changed_data_set_refuses_to_resume(
    form_runs: Callable, module_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    assert form_runs("txt")[0] == 0
    lst = module_tmp / "forms" / "lists" / "train.txt"
    lines = lst.read_text().splitlines()
    changed = module_tmp / "forms" / "lists" / "changed.txt"
    changed.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same files and count, other order
    exp = module_tmp / "runs" / "txt"
    argv = [*TINY_ARGS, "--exp-dir", str(exp), "--resume", "auto", "--epochs", "3"]
    assert cli.main([str(changed), *argv]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # before it: progress bars of the image cache
    assert "Traceback" not in err and last.startswith("error: cannot resume") and "training data changed" in last
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    extra = module_tmp / "forms" / "lists" / "extra.txt"
    extra.write_text("\n".join(lines[:-1]) + "\n")
    assert cli.main([str(extra), *argv]) == 2
    assert "training images 48 -> 47" in capsys.readouterr().err


# ---------------------------------------------------------------- bad data input: one error line, exit 2
def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    exp = tempfile.mkdtemp(prefix="pcl-data-forms-")
    try:
        assert cli.main([*argv, *TINY_ARGS, "--exp-dir", exp]) == 2
    finally:
        shutil.rmtree(exp, ignore_errors=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


def test_empty_folder(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    (tmp_path / "empty" / ".ipynb_checkpoints").mkdir(parents=True)
    assert "no images found under" in error_line(capsys, [str(tmp_path / "empty")])


def test_list_naming_missing_files(capsys: pytest.CaptureFixture, tiny_data: Path, tmp_path: Path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text(f"{next((tiny_data / 'train' / 'class0').glob('*.jpg'))}\nnot/there.jpg\n")
    assert "names 1 missing files, e.g." in error_line(capsys, [str(lst)])


def test_csv_with_a_bad_label_column(capsys: pytest.CaptureFixture, tiny_data: Path, tmp_path: Path) -> None:
    a, b = sorted((tiny_data / "train" / "class0").glob("*.jpg"))[:2]
    lst = tmp_path / "l.csv"
    lst.write_text(f"{a},cat\n{b},dog,3\n")
    assert "line 2: expected path[,label], got 3 columns" in error_line(capsys, [str(lst)])


def test_val_without_labels_when_knn_is_asked(capsys: pytest.CaptureFixture, tiny_data: Path, tmp_path: Path) -> None:
    flat = flatten(tiny_data / "test", tmp_path / "flatval")
    line = error_line(capsys, [str(tiny_data / "train"), "--val", str(flat)])
    assert "--val is given for the kNN monitor" in line and "--knn-freq 0" in line


def test_evaluate_shows_a_dash_where_a_figure_needs_labels(
    form_runs: Callable, module_tmp: Path, capsys: pytest.CaptureFixture
) -> None:
    assert form_runs("txt")[0] == 0
    evaluate = load_tool("evaluate")
    run = module_tmp / "runs" / "txt"  # unlabeled list
    assert evaluate.main([str(run), "--device", "cpu", "-j", "0", "--out", str(module_tmp / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "kNN top-1" not in out and "linear top-1" not in out  # no figure without labels
    assert "knn, linear: – (the training data has no labels)" in out  # the protocols asked for that need labels
    result = json.loads((module_tmp / "eval.json").read_text())
    assert result["knn_top1"] is None and result["linear_top1"] is None and result["cluster"] == {}
    # issue 27, item 9: low-shot asked on an unlabeled run names low-shot, not the default protocols
    args = [str(run), "--device", "cpu", "-j", "0", "--out", str(module_tmp / "e2.json"), "--protocols", "lowshot"]
    assert evaluate.main(args) == 0
    assert "lowshot: – (the training data has no labels)" in capsys.readouterr().out
