"""The experiments workflow: metrics.json, the suite runner (resume, skip, failures, dry run), summaries, plots,
and the ablation flags it needs (--proto-weight, --fixed-concentration, MoCo-only runs)."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import statistics
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from pcl import cli
from pcl.config import parse_config
from pcl.run.curves import aggregate, load_curves
from pcl.run.metrics import MetricsLog
from pcl.run.run_dir import RunDir
from pcl.utils.errors import PCLError
from tests.helpers import ROOT, TINY_ARGS, load_experiments, write_suite

runner = load_experiments()
from launch import last_error_line  # noqa: E402 - experiments/ is on the path now
from suite import flags_to_argv, load_suite  # noqa: E402
from summary import RunRow, SeedResult, summarize, table  # noqa: E402

TWO_RUNS = """
[[runs]]
name = "moco"
flags = { warmup-epochs = 2 }
[[runs]]
name = "pcl"
"""


@pytest.fixture(scope="module")
def suite_run(tiny_data: Path, module_tmp: Path) -> tuple[Path, Path]:
    """2 runs x 2 seeds x 2 epochs, plus a third run that fails; returns (suite file, out dir)."""
    tmp = module_tmp
    failing = '\n[[runs]]\nname = "too-many-clusters"\nflags = { num-cluster = "1000" }\n'
    suite = write_suite(tmp / "tiny.toml", TWO_RUNS + failing, seeds=2)
    out = tmp / "out"
    assert runner.main([str(suite), str(tiny_data), "--out", str(out)]) == 1  # a run failed: exit status 1
    return suite, out


def test_suite_table_has_mean_and_std_over_seeds(suite_run: tuple[Path, Path]) -> None:
    _, out = suite_run
    rows = {r["run"]: r for r in csv.DictReader((out / "tiny" / "results.csv").read_text().splitlines())}
    assert list(rows) == ["moco", "pcl", "too-many-clusters"]
    for name in ("moco", "pcl"):
        knns = [json.loads((out / "tiny" / name / f"seed{s}" / "metrics.json").read_text())["final"]["knn_top1"]
                for s in (0, 1)]  # fmt: skip
        assert rows[name]["seeds_done"] == "2"
        assert float(rows[name]["knn_mean"]) == pytest.approx(statistics.fmean(knns))
        assert float(rows[name]["knn_std"]) == pytest.approx(statistics.stdev(knns))
    assert rows["moco"]["acc_proto_final"] == ""  # no E-step in a MoCo run
    assert 0.0 <= float(rows["pcl"]["acc_proto_final"]) <= 100.0
    assert float(rows["moco"]["sec_per_epoch_rel"]) == pytest.approx(1.0)
    assert rows["pcl"]["flags"] == "" and rows["moco"]["flags"] == "--warmup-epochs 2"
    md = (out / "tiny" / "results.md").read_text()
    assert "| moco | 2/2 |" in md and "| pcl | 2/2 |" in md and " ± " in md


def test_resummarizing_keeps_hand_written_notes(suite_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = suite_run
    md = summarize(out / "tiny", tmp_path)
    table = md.read_text()
    assert "## Notes" not in table
    notes = "## Notes (written by hand)\n\n- PCL wins here, says the reader.\n"
    md.write_text(table + "\n" + notes)
    summarize(out / "tiny", tmp_path)
    summarize(out / "tiny", tmp_path)  # twice: the notes are kept once, not appended again
    assert md.read_text() == table + "\n" + notes


def test_failed_run_is_reported_and_the_others_still_ran(suite_run: tuple[Path, Path]) -> None:
    _, out = suite_run
    status = json.loads((out / "tiny" / "too-many-clusters" / "seed0" / "status.json").read_text())
    assert status["status"] == "failed" and status["returncode"] == 2
    assert status["error"].startswith("error: --num-cluster 1000 exceeds")
    md = (out / "tiny" / "results.md").read_text()
    assert "| too-many-clusters | 0/2 |" in md
    assert "`too-many-clusters`: seed0: error: --num-cluster 1000 exceeds" in md


def test_plots_are_valid_pngs_with_one_line_per_run(suite_run: tuple[Path, Path]) -> None:
    _, out = suite_run
    for name in ("knn_top1", "acc_inst", "acc_proto"):
        path = out / "tiny" / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        assert f"![{name}]({name}.png)" in (out / "tiny" / "results.md").read_text()


def test_second_invocation_skips_finished_runs(
    suite_run: tuple[Path, Path], tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite, out = suite_run
    metrics = out / "tiny" / "pcl" / "seed1" / "metrics.json"
    before = metrics.stat().st_mtime_ns
    capsys.readouterr()
    assert runner.main([str(suite), str(tiny_data), "--out", str(out), "--runs", "moco,pcl"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, skipped") == 4 and "training in" not in printed
    assert metrics.stat().st_mtime_ns == before


def test_dry_run_prints_commands_and_writes_nothing(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = write_suite(tmp_path / "tiny.toml", TWO_RUNS, seeds=2)
    out = tmp_path / "out"
    assert runner.main([str(suite), str(tiny_data), "--out", str(out), "--dry-run", "--", "--amp", "bf16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("python -m pcl ") for ln in lines)
    assert lines[0].count("--warmup-epochs") == 1 and "--warmup-epochs 2 " in lines[0]  # the run overrides the base
    assert "--amp bf16 --seed 0" in lines[0]  # extra flags after the suite's, then the runner's own
    assert lines[1].endswith(f"--seed 0 --exp-dir {out}/tiny/pcl/seed0 --resume auto")  # seed-major order
    assert not out.exists()


def test_interrupted_run_resumes(tmp_path: Path, tiny_data: Path) -> None:
    """A run stopped after epoch 1 (as by a kill after its checkpoint) is continued, not restarted."""
    suite = write_suite(tmp_path / "one.toml", '[[runs]]\nname = "pcl"\n', seeds=1)
    out = tmp_path / "out"
    assert runner.main([str(suite), str(tiny_data), "--out", str(out), "--", "--stop-after-epochs", "1"]) == 0
    exp = out / "one" / "pcl" / "seed0"
    first = json.loads((exp / "metrics.json").read_text())
    assert not first["complete"] and [e["epoch"] for e in first["epochs"]] == [0]
    assert json.loads((exp / "status.json").read_text())["status"] == "stopped"
    assert runner.main([str(suite), str(tiny_data), "--out", str(out)]) == 0
    second = json.loads((exp / "metrics.json").read_text())
    assert second["complete"] and [e["epoch"] for e in second["epochs"]] == [0, 1]
    assert second["epochs"][0] == first["epochs"][0]  # epoch 0 was not redone
    log = (exp / "train.log").read_bytes().decode()  # as written: read_text would turn "\r" into "\n"
    assert "resumed from" in log
    # the runner redirects the run's output there and the run's own tee adds nothing: each epoch line once
    assert re.findall(r"^epoch (\d+):", log, flags=re.M) == ["0", "1"] and "\r" not in log


def test_bad_suite_files_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = {
        "syntax.toml": "[base\n",
        "noruns.toml": "[base]\nepochs = 1\n",
        "dup.toml": '[[runs]]\nname = "a"\n[[runs]]\nname = "a"\n',
        "dash.toml": '[[runs]]\nname = "a"\nflags = { "--epochs" = 1 }\n',
        "seed.toml": '[[runs]]\nname = "a"\nflags = { seed = 1 }\n',
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PCLError):
            load_suite(str(tmp_path / name))
        assert runner.main([str(tmp_path / name), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
    assert runner.main(["no-such-suite"]) == 2
    assert "known suites: backbones_views, baseline, batch" in capsys.readouterr().err  # every suite file, sorted


def test_shipped_suites_parse() -> None:
    for name in ("baseline", "warmup", "optimizers", "protonce", "batch", "backbones_views", "prototypes"):
        suite = load_suite(name)
        for run in suite.runs:  # every run's flags are accepted by main_pcl's parser
            parse_config(flags_to_argv({**suite.base, **run.flags}))
    assert load_suite("baseline").seeds >= 3


def test_flags_to_argv_and_error_line() -> None:
    assert flags_to_argv({"epochs": 3, "mlp": False, "save-clusters": True, "amp": "bf16"}) == [
        "--epochs", "3", "--no-mlp", "--save-clusters", "--amp", "bf16",
    ]  # fmt: skip
    log = "epoch 0: 10%\rprogress\nerror: something broke\nTraceback-free tail\n"
    assert last_error_line(log) == "error: something broke"
    assert last_error_line("a\nlast words\n") == "last words"


# ---------------------------------------------------------------------------------------------- metrics.json
def test_metrics_json_of_a_run(tiny_data: Path, tmp_path: Path) -> None:
    assert cli.main([str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["complete"] and doc["epochs_total"] == 2 and doc["warmup_epochs"] == 1
    e0, e1 = doc["epochs"]
    assert (e0["epoch"], e1["epoch"]) == (0, 1)
    for key in ("epoch/acc_inst", "epoch/loss", "eval/knn_top1", "time/epoch_total_seconds", "memory/peak_rss_mib"):
        assert key in e0 and key in e1
    assert "epoch/acc_proto" not in e0 and "epoch/acc_proto" in e1  # ProtoNCE after the warmup epoch only
    assert "time/estep_seconds" in e1 and "cluster/k5/objective" in e1
    final = doc["final"]
    assert final["knn_top1"] == e1["eval/knn_top1"] and final["best_acc_proto"] == e1["epoch/acc_proto"]
    assert final["peak_rss_mib"] > 100
    curves = load_curves(tmp_path)
    assert curves["epoch/acc_inst"] == {0: e0["epoch/acc_inst"], 1: e1["epoch/acc_inst"]}


def test_metrics_log_resume_drops_redone_epochs(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.json", epochs_total=3, warmup_epochs=1)
    for e in range(3):
        log.add(e, {"epoch/acc_inst": 10.0 * e, "epoch/acc_proto": float("nan") if e == 0 else 5.0 * e})
    assert json.loads((tmp_path / "metrics.json").read_text())["complete"]
    again = MetricsLog(tmp_path / "metrics.json", epochs_total=3, warmup_epochs=1)
    again.resume(completed_epochs=2)  # the checkpoint holds 2 epochs: epoch 2 will be redone
    assert [e["epoch"] for e in again.epochs] == [0, 1]
    again.add(2, {"epoch/acc_inst": 99.0})
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch/acc_inst"] for e in doc["epochs"]] == [0.0, 10.0, 99.0]
    assert doc["epochs"][0]["epoch/acc_proto"] is None  # NaN is stored as null (valid JSON)
    assert doc["final"]["best_acc_proto"] == 5.0


def test_aggregate_over_seeds() -> None:
    x, mean, lo, hi = aggregate([{0: 1.0, 1: 3.0, 2: 5.0}, {0: 3.0, 1: 5.0}])
    assert x.tolist() == [0, 1] and mean.tolist() == [2.0, 4.0] and lo.tolist() == [1.0, 3.0]
    assert hi.tolist() == [3.0, 5.0]


def test_seconds_per_epoch_is_the_median_over_seeds() -> None:
    """One seed run on a loaded machine (10x slower) must not decide the relative cost column."""

    def row(name: str, secs: list[float]) -> RunRow:
        seeds = [SeedResult(seed=i, status="done", figures={"knn": 30.0}, sec_per_epoch=t) for i, t in enumerate(secs)]
        return RunRow(name, {}, len(secs), seeds)

    cells = table([row("moco", [160.0, 16.0, 16.0]), row("pcl", [18.0, 18.0, 20.0])])
    assert cells[0]["sec_per_epoch"] == 16.0 and cells[1]["sec_per_epoch"] == 18.0
    assert cells[0]["sec_per_epoch_rel"] == 1.0 and cells[1]["sec_per_epoch_rel"] == pytest.approx(18.0 / 16.0)


def test_plot_curves_tool(suite_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("plot_curves", ROOT / "tools" / "plot_curves.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _, out = suite_run
    runs = [str(out / "tiny" / "moco"), str(out / "tiny" / "pcl" / "seed0")]
    assert tool.main([*runs, "--tags", "epoch/acc_inst,eval/knn_top1", "--out", str(tmp_path / "c.png")]) == 0
    for tag in ("epoch_acc_inst", "eval_knn_top1"):
        with Image.open(tmp_path / f"c_{tag}.png") as im:
            assert im.size[0] > 100
    assert tool.main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


# ---------------------------------------------------------------------------------------------- ablation flags
def test_official_defaults_cluster_after_warmup_and_moco_note(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = parse_config(["--warmup-epochs", "20", "--optimizer", "sgd-cos"])
    t, loss = cfg.train, cfg.loss
    assert t.epochs == 200 and loss.warmup_epochs < t.epochs and loss.proto_weight == 1.0
    assert not loss.fixed_concentration
    assert cli.main([str(tiny_data), *TINY_ARGS, "--warmup-epochs", "2", "--exp-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: --warmup-epochs 2 >= --epochs 2: no E-step will run" in out
    assert "acc_proto" not in out
    assert not any(e.get("epoch/acc_proto") for e in json.loads((tmp_path / "metrics.json").read_text())["epochs"])
    for bad in ("-1", "nan"):
        assert cli.main([str(tiny_data), *TINY_ARGS, "--proto-weight", bad, "--exp-dir", str(tmp_path)]) == 2
    assert "--proto-weight must be" in capsys.readouterr().err


def test_summary_shows_the_evaluation_protocols_with_mean_and_std(tmp_path: Path) -> None:
    """eval.json's low-shot k=1/16, fine-tune 1 %/10 % and clustering ACC (k = classes) become columns."""
    from summary import _markdown, read_seed

    seeds = []
    for seed, (top1, acc) in enumerate(((20.0, 0.30), (30.0, 0.40))):
        exp = tmp_path / f"seed{seed}"
        exp.mkdir()
        evaluation = {
            "knn_top1": 50.0,
            "lowshot": {"1": {"top1": top1}, "16": {"top1": top1 + 20.0}},
            "finetune": {"1": {"top1": top1 + 1.0}, "10": {"top1": top1 + 2.0}},
            "kmeans": {"10": {"acc": acc}, "20": {"acc": 0.9}},
            "settings": {"kmeans": {"k_classes": 10}},
        }
        (exp / "eval.json").write_text(json.dumps(evaluation))
        s = read_seed(exp, seed)
        s.status = "done"
        seeds.append(s)
    assert seeds[0].figures == {
        "knn": 50.0,
        "linear": None,
        "ami": None,
        "lowshot_k1": 20.0,
        "lowshot_k16": 40.0,
        "finetune_1": 21.0,
        "finetune_10": 22.0,
        "finetune_lp_1": None,
        "finetune_lp_10": None,
        "cluster_acc": 30.0,  # k = number of classes, in percent
    }
    cells = table([RunRow("pcl", {}, 2, seeds), RunRow("moco", {}, 2, [SeedResult(seed=0, status="done")])])
    assert cells[0]["lowshot_k1_mean"] == 25.0
    assert cells[0]["lowshot_k1_std"] == pytest.approx(statistics.stdev([20, 30]))
    assert cells[0]["cluster_acc_mean"] == pytest.approx(35.0) and cells[1]["finetune_10_mean"] is None
    md = _markdown({"suite": "s", "seeds": 2}, cells, [])
    assert "| low-shot top-1 k=1 (%) | low-shot top-1 k=16 (%) | fine-tune top-1 1% (%)" in md
    assert "| 25.00 ± 7.07 | 45.00 ± 7.07 | 26.00 ± 7.07 | 27.00 ± 7.07 | 35.00 ± 7.07 |" in md


def test_eval_measures_the_untrained_encoder_once_and_the_summary_shows_it_last(
    suite_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    _, out = suite_run
    suite_dir = out / "tiny"
    moco = suite_dir / "moco" / "seed0"
    jobs = [SimpleNamespace(exp_dir=moco, run_dir=RunDir(moco))]
    monkeypatch.setattr(runner, "EVAL_PROTOCOLS", "knn,clusters")  # the tiny data is too small for the others
    target = suite_dir / "untrained" / "eval.json"
    try:
        runner._evaluate_untrained(jobs, suite_dir)
        evaluation = json.loads(target.read_text())
        assert evaluation["settings"]["encoder"] == "untrained" and evaluation["cluster"] == {}
        assert not (moco / "eval.json").exists()  # the run's own evaluation is not touched
        md = summarize(suite_dir, tmp_path / "res").read_text()
        rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
        reference = [ln for ln in rows if ln.startswith("| untrained encoder |")]  # the table's last row
        assert reference and reference[0].startswith(f"| untrained encoder | 1/1 | {evaluation['knn_top1']:.2f} |")
        assert "--encoder untrained" in reference[0]
        assert not (tmp_path / "res" / "lowshot.png").exists()  # no low-shot figures: no plot
    finally:
        target.unlink(missing_ok=True)


def test_lowshot_plot_has_one_line_per_run_and_a_band_over_seeds(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from summary import draw_lowshot, plot_lowshot

    def seed(i: int, shift: float) -> SeedResult:
        return SeedResult(seed=i, status="done", lowshot={1: 20 + shift, 4: 30 + shift, 16: 40 + shift})

    rows = [
        RunRow("pcl", {}, 3, [seed(0, 0), seed(1, 6), seed(2, -3)]),
        RunRow("moco", {}, 3, [seed(0, 2), seed(1, 4), SeedResult(seed=2, status="failed")]),
        RunRow("untrained encoder", {}, 1, [seed(0, -15)], note="reference"),
        RunRow("not evaluated", {}, 1, [SeedResult(seed=0, status="done")]),
    ]
    fig, ax = plt.subplots()
    draw_lowshot(ax, rows)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == ["pcl (3 seeds)", "moco (2 seeds)", "untrained encoder (1 seed)"]
    assert list(ax.get_lines()[0].get_ydata()) == [21.0, 31.0, 41.0]  # mean over seeds
    assert list(ax.get_lines()[1].get_xdata()) == [1, 4, 16] and ax.get_lines()[2].get_linestyle() == "--"
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # one per run with several seeds
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(17.0) and max(ys) == pytest.approx(46.0)  # min and max seed
    plt.close(fig)
    png = plot_lowshot(rows, tmp_path / "lowshot.png", "t")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (640, 400)


def test_a_toy_protocol_becomes_a_column_of_the_suite_summary(
    suite_run: tuple[Path, Path], toy_protocol: ModuleType, tmp_path: Path
) -> None:
    """A protocol registered from a test-only module (``tests/toy_protocol.py``) evaluates a suite's run into its
    own eval.json and becomes a summary column (Markdown header, CSV key): no edit of the summary code."""
    from pcl.eval.eval_config import EvalConfig
    from pcl.eval.evaluation import evaluate_run
    from pcl.eval.protocols import PROTOCOLS
    from pcl.eval.registry import choose

    _, out = suite_run
    suite_dir = out / "tiny"
    exp = suite_dir / "pcl" / "seed0"
    target = RunDir(exp).eval
    protocols = choose("knn", toy=toy_protocol.ToySettings(2.0))
    try:
        res = evaluate_run(exp, EvalConfig(device="cpu", workers=0, batch_size=16, show=False, protocols=protocols))
        assert res["settings"]["written"] == str(target)  # the run's own eval.json
        md = summarize(suite_dir, tmp_path / "res").read_text().splitlines()
        head = next(ln for ln in md if ln.startswith("| run |")).split(" | ")
        row = next(ln for ln in md if ln.startswith("| pcl |")).split(" | ")
        assert row[head.index("toy mean norm")] == f"{res['toy']['mean_norm']:.3f}"  # one seed evaluated: no std
        rows = {r["run"]: r for r in csv.DictReader((tmp_path / "res" / "results.csv").read_text().splitlines())}
        assert float(rows["pcl"]["toy_norm_mean"]) == pytest.approx(res["toy"]["mean_norm"])
        assert rows["moco"]["toy_norm_mean"] == "" and rows["pcl"]["toy_norm_std"] == ""
        PROTOCOLS.pop("toy")  # unregistered: the column goes with it
        assert "toy" not in summarize(suite_dir, tmp_path / "res").read_text()
    finally:
        target.unlink(missing_ok=True)
