"""Cluster quality metrics: values against scikit-learn and by hand; TensorBoard tags after warmup, with labels."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

from pcl import cli
from pcl.analysis.cluster_metrics import (
    accuracy_scores,
    cluster_scalars,
    clustering_accuracy,
    has_classes,
    kmeans_scores,
    label_scores,
)
from pcl.config import parse_config
from pcl.data.sources import resolve_data
from pcl.estep.clustering import ClusterResult, Granularity
from pcl.eval.eval_config import EvalConfig
from pcl.eval.evaluation import evaluate_run
from pcl.eval.protocols.kmeans import KmeansSettings
from pcl.eval.protocols.linear import LinearSettings
from pcl.eval.registry import choose
from pcl.eval.run_source import last_cluster_result
from pcl.run.run_dir import RunDir
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError
from tests.helpers import TINY_ARGS, load_tool, make_image_folder, scalars


def test_label_scores_equal_sklearn_and_hand_purity() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    im2cluster = np.array([4, 4, 1, 1, 1, 0, 0, 0, 3, 3])
    s = label_scores(torch.from_numpy(im2cluster), labels)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(labels, im2cluster), abs=1e-12)
    assert s["ami"] == pytest.approx(adjusted_mutual_info_score(labels, im2cluster), abs=1e-12)
    # majority counts per cluster: 0 -> 2 (class 2), 1 -> 2 (class 1), 3 -> 2, 4 -> 2: 8 of 10
    assert s["purity"] == pytest.approx(0.8)
    perfect = label_scores(labels * 7, labels)  # a relabelling of the classes
    assert perfect == pytest.approx({"nmi": 1.0, "ami": 1.0, "purity": 1.0})


def _brute_force_acc(a: np.ndarray, y: np.ndarray) -> float:
    """Best one-to-one map of clusters to classes by trying every injection (the smaller side into the larger)."""
    ca, cy = np.unique(a), np.unique(y)
    best = 0
    if len(ca) <= len(cy):
        for image in itertools.permutations(cy, len(ca)):
            best = max(best, sum(int(((a == c) & (y == t)).sum()) for c, t in zip(ca, image, strict=True)))
    else:
        for image in itertools.permutations(ca, len(cy)):
            best = max(best, sum(int(((a == c) & (y == t)).sum()) for t, c in zip(cy, image, strict=True)))
    return best / len(y)


def test_acc_equals_the_brute_force_best_permutation_and_sklearn_metrics() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        n, kc, ky = int(rng.integers(5, 40)), int(rng.integers(2, 6)), int(rng.integers(2, 6))
        a, y = rng.integers(0, kc, n), rng.integers(0, ky, n)
        if trial % 3 == 0:  # a noisy relabelling: ACC near 1 needs the matching, not the identity
            a = (y + 2) % ky
            a[rng.random(n) < 0.2] = 0
        assert clustering_accuracy(a, y) == pytest.approx(_brute_force_acc(a, y), abs=1e-12)
        s = accuracy_scores(torch.from_numpy(a), y)
        assert s["nmi"] == pytest.approx(normalized_mutual_info_score(y, a), abs=1e-12)
        assert s["ari"] == pytest.approx(adjusted_rand_score(y, a), abs=1e-12)
        assert s["ami"] == pytest.approx(adjusted_mutual_info_score(y, a), abs=1e-12)
    # by hand: clusters {0: [0, 0, 1], 1: [1, 1, 2], 2: [2]} -> 0->0, 1->1, 2->2: 2 + 2 + 1 of 7
    assert clustering_accuracy([0, 0, 0, 1, 1, 1, 2], [0, 0, 1, 1, 1, 2, 2]) == pytest.approx(5 / 7)
    assert clustering_accuracy([5, 5, 3, 3], [0, 0, 1, 1]) == 1.0
    assert clustering_accuracy([0, 0, 0, 0], [0, 0, 1, 1]) == 0.5  # one cluster: matched to one class


def test_random_assignment_has_ami_near_zero() -> None:
    rng = np.random.default_rng(0)
    labels, im2cluster = rng.integers(0, 10, 5000), rng.integers(0, 50, 5000)
    s = label_scores(im2cluster, labels)
    assert abs(s["ami"]) < 0.01 and s["nmi"] > s["ami"]  # NMI is not chance-corrected


def test_cluster_scalars_tags_per_granularity() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    levels = [Granularity(k, torch.tensor(a), torch.eye(4)[:k], torch.ones(k)) for k, a in ((2, [1, 1, 0, 0]),)]
    levels.append(Granularity(3, torch.tensor([0, 1, 2, 2]), torch.eye(4)[:3], torch.ones(3)))
    out = cluster_scalars(ClusterResult(1, levels), labels)
    assert set(out) == {f"cluster/k{k}/{m}" for k in (2, 3) for m in ("nmi", "ami", "purity")}
    assert out["cluster/k2/ami"] == pytest.approx(1.0) and out["cluster/k3/purity"] == pytest.approx(1.0)
    assert has_classes(labels) and not has_classes(torch.zeros(4)) and not has_classes(None)


def _run(data: Path, exp: Path, *extra: str) -> dict:
    assert cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp), *extra]) == 0
    return scalars(exp)


@pytest.fixture(scope="module")
def labelled_run(tiny_data: Path, module_tmp: Path) -> tuple[Path, dict]:
    exp = module_tmp
    return exp, _run(tiny_data, exp)  # 2 epochs, the first one is the warmup


def test_tags_only_after_warmup_and_with_labels(
    labelled_run: tuple[Path, dict], tiny_data: Path, tmp_path: Path
) -> None:
    tags = labelled_run[1]
    for k in (3, 5):
        for m in ("nmi", "ami", "purity"):
            assert [s for s, _ in tags[f"cluster/k{k}/{m}"]] == [1]  # epoch 0: no E-step, no tag
            assert all(-0.1 <= v <= 1.0 for _, v in tags[f"cluster/k{k}/{m}"])
    assert [s for s, _ in tags["time/cluster_metrics_seconds"]] == [1]
    # the engine logs them only when the loaders carry labels: not with --no-cluster-metrics ...
    off = _run(tiny_data, tmp_path / "off", "--no-cluster-metrics", "--epochs", "1", "--warmup-epochs", "0")
    assert "cluster/k3/objective" in off and not any(t.endswith(("/ami", "/nmi", "/purity")) for t in off)
    # ... and not for a training set of a single class
    one = make_image_folder(tmp_path / "one" / "train", per_class=48, classes=1).parent
    args = [*TINY_ARGS, "--exp-dir", str(tmp_path / "x")]
    assert cli.build_loaders(parse_config([str(one), *args]), DistInfo()).train_labels is None
    labels = cli.build_loaders(parse_config([str(tiny_data), *args]), DistInfo()).train_labels
    assert labels is not None and labels.tolist() == sorted(labels.tolist()) and labels.unique().tolist() == [0, 1, 2]


def test_evaluate_run_agrees_with_the_training_logs(labelled_run: tuple[Path, dict]) -> None:
    exp, tags = labelled_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problem on a loaded 2-core machine (see test_linear_eval)
    try:
        protocols = choose("knn", "clusters", linear=LinearSettings(wd_grid=(1e-3, 1e-1), max_iter=30))
        cfg = EvalConfig(batch_size=16, workers=0, device="cpu", show=False, protocols=protocols)
        res = evaluate_run(exp, cfg)
    finally:
        torch.set_num_threads(threads)
    written = json.loads((exp / "eval.json").read_text())
    assert written == json.loads(json.dumps(res))
    assert set(written) == {"knn_top1", "linear_top1", "linear_top5", "cluster", "kmeans", "reference", "settings"}
    # the fair untrained reference, measured now (same data, seed and settings) and kept beside eval.json
    assert set(written["reference"]["columns"]) == {"knn", "linear"} and written["reference"]["from"] == "measured now"
    assert (exp / "eval_untrained.json").is_file() and "recomputed on 48 images" in written["reference"]["bn"]
    assert written["kmeans"] == {}  # only with --kmeans
    assert set(written["cluster"]) == {"3", "5"}
    for k in (3, 5):  # the checkpoint's cluster result is the one logged after the last E-step
        for m in ("nmi", "ami", "purity"):
            assert written["cluster"][str(k)][m] == pytest.approx(tags[f"cluster/k{k}/{m}"][-1][1], abs=1e-6)
    assert written["knn_top1"] == pytest.approx(tags["eval/knn_top1"][-1][1], abs=1e-4)  # same features, same kNN
    assert 0.0 <= written["linear_top1"] <= 100.0
    assert written["settings"]["cluster_epoch"] == 1 and written["settings"]["linear"]["protocol"] == "features"


def test_an_older_checkpoint_uses_its_own_clusters_and_keeps_eval_json(
    labelled_run: tuple[Path, dict], tmp_path: Path
) -> None:
    exp, _ = labelled_run
    older = exp / "checkpoints" / "checkpoint_0002.pth"
    res = evaluate_run(older, EvalConfig(show=False, protocols=choose("clusters")))
    assert res["settings"]["written"] is None and set(res["cluster"]) == {"3", "5"}
    run = RunDir(tmp_path)
    for epoch in (1, 4):  # clusters of the E-steps at the start of epochs 1 and 4
        level = Granularity(2, torch.tensor([0, 1]), torch.eye(2), torch.ones(2))
        run.clusters.mkdir(exist_ok=True)
        torch.save(ClusterResult(epoch, [level]).state_dict(), run.clusters_file(epoch))
    found = last_cluster_result(run, {"epoch": 3, "cluster_result": None})  # 3 epochs done: epoch 4 is later
    assert found is not None and found.epoch == 1


def test_kmeans_scores_recover_separated_classes_and_ignore_shuffled_labels() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    centres = torch.eye(8)[:3] * 10.0
    x = centres[labels] + 0.1 * torch.randn(120, 8, generator=g)
    s = kmeans_scores(x, labels, (3, 6), restarts=3)
    for m in ("acc", "nmi", "ari", "ami", "purity"):
        assert s["3"][m] == pytest.approx(1.0) and s["3"][f"{m}_std"] == pytest.approx(0.0, abs=1e-12)
    assert s["3"]["restarts"] == 3 and len(s["3"]["runs"]) == 3
    assert s["6"]["purity"] == pytest.approx(1.0) and s["6"]["ami"] < 1.0  # a split class is still pure
    assert s["6"]["acc"] <= 1.0 and s["6"]["acc"] >= 0.5  # three of six clusters matched, each holding half a class
    shuffled = labels[torch.randperm(120, generator=g)]
    chance = kmeans_scores(x, shuffled, (3,), restarts=2)["3"]
    assert abs(chance["ami"]) < 0.05 and abs(chance["ari"]) < 0.05 and chance["acc"] < 0.5
    runs = chance["runs"]
    assert chance["acc"] == pytest.approx(np.mean([r["acc"] for r in runs]))
    assert chance["acc_std"] == pytest.approx(np.std([r["acc"] for r in runs]))
    with pytest.raises(PCLError, match="k = 121"):
        kmeans_scores(x, labels, (121,))


def test_evaluate_kmeans_on_any_run_and_bad_values(
    labelled_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    exp, _ = labelled_run
    out = tmp_path / "e.json"
    kw = {"batch_size": 16, "workers": 0, "show": False, "protocols": choose(kmeans=KmeansSettings(ks=(3, 5)))}
    res = evaluate_run(exp, EvalConfig(out=out, **kw))
    assert set(res["kmeans"]) == {"3", "5"} and res["cluster"] == {}
    for s in res["kmeans"].values():  # 3 balanced classes: any assignment has purity >= 1/3
        assert -0.1 <= s["ami"] <= 1.0 and 1 / 3 - 1e-9 <= s["purity"] <= 1.0
    assert evaluate_run(exp, EvalConfig(**kw))["kmeans"] == res["kmeans"]  # seeded: repeatable
    assert json.loads(out.read_text())["settings"]["kmeans"]["seed"] == 0
    tool = load_tool("evaluate")
    for bad, needle in (("3,x", "expected comma-separated integers"), ("1000", "k = 1000")):
        assert tool.main([str(exp), "--kmeans", bad, "--out", str(tmp_path / "x.json"), "--workers", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()  # feature progress bars may come first
        assert [ln for ln in err if ln.startswith("error: ")] == err[-1:] and needle in err[-1], err
        assert not any("Traceback" in ln for ln in err)


def _own_eval(exp: Path) -> tuple[RunDir, bytes]:
    """The run and its own ``eval.json`` bytes (written first when missing), to check later that it is kept."""
    run = RunDir(exp)
    if not run.eval.is_file():
        evaluate_run(exp, EvalConfig(show=False, protocols=choose("clusters")))
    return run, run.eval.read_bytes()


def test_evaluate_on_other_data_neither_scores_the_runs_clusters_nor_overwrites_eval_json(
    labelled_run: tuple[Path, dict], tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    exp, _ = labelled_run
    run, before = _own_eval(exp)
    # other data with as many train images as the run's (48 in 3 classes): once scored as if clustered
    other = tmp_path / "other"
    make_image_folder(other / "train", per_class=16, seed=5)
    make_image_folder(other / "test", per_class=4, seed=6)
    cfg = EvalConfig(data=str(other), batch_size=16, workers=0, show=False, protocols=choose("knn", "clusters"))
    res = evaluate_run(exp, cfg)
    assert res["cluster"] == {} and "not" in res["settings"]["cluster_skipped"]
    assert res["knn_top1"] is not None and res["settings"]["written"] is None
    assert run.eval.read_bytes() == before  # the run's own eval.json is kept
    assert res["settings"]["data_identity"] == resolve_data(str(other)).identity()  # sources.ImageSet.identity
    assert res["settings"]["data_identity"]["count"] == 48
    tool = load_tool("evaluate")
    assert tool.main([str(exp), "--data", str(other), "--protocols", "clusters", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "clusters not scored" in out and "not written" in out and "--out FILE" in out
    assert run.eval.read_bytes() == before
    target = tmp_path / "other.json"  # asked for: written there
    assert tool.main([str(exp), "--data", str(other), "--protocols", "clusters", "--out", str(target)]) == 0
    assert json.loads(target.read_text())["cluster"] == {}
    # the run's own data given explicitly (another spelling of the same folder) is still the run's own
    own = evaluate_run(exp, EvalConfig(data=f"{tiny_data}/train/..", show=False, protocols=choose("clusters")))
    assert set(own["cluster"]) == {"3", "5"}


def test_evaluate_runs_all_five_protocols_in_one_table(
    labelled_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    exp, _ = labelled_run
    out = tmp_path / "five.json"
    tool = load_tool("evaluate")
    fast = ["--workers", "0", "--eval-batch-size", "16", "--wd-grid", "1e-2", "--max-iter", "20"]
    fast += ["--lowshot", "1,2", "--lowshot-draws", "2", "--lowshot-costs", "0.1,1", "--kmeans-restarts", "2"]
    fast += ["--finetune", "25", "--finetune-steps", "2", "--finetune-batch-size", "6", "--device", "cpu"]
    fast += ["--finetune-val-per-class", "4", "--finetune-draws", "1", "--finetune-lr", "0.01", "--reference", "none"]
    protocols = "knn,linear,lowshot,finetune,kmeans"
    assert tool.main([str(exp), "--protocols", protocols, "--out", str(out), *fast]) == 0
    printed = capsys.readouterr().out
    for needle in (
        "kNN top-1",
        "linear top-1",
        "low-shot k=1 (2 draws, cost fixed)",
        "low-shot k=2 (2 draws, cost cv)",
        "fine-tune 25% (12 labels, 1 draws)",
        "frozen linear probe, same 12 labels",
        "k-means k=3 (2 restarts) ACC",
    ):
        assert needle in printed, printed
    assert "NMI / AMI / purity" not in printed  # the run's own clusters: not asked for
    res = json.loads(out.read_text())
    assert set(res["lowshot"]) == {"1", "2"} and set(res["kmeans"]) == {"3"} and set(res["finetune"]) == {"25"}
    draw = res["finetune"]["25"]["draws"][0]
    subset, val = Path(draw["subset_file"]), Path(draw["val_file"])
    assert subset.parent == tmp_path / "finetune" and len(subset.read_text().splitlines()) == 12
    assert len(val.read_text().splitlines()) == 12 and not set(subset.read_text().splitlines()) & set(
        val.read_text().splitlines())
    assert res["settings"]["lowshot"]["draws"] == 2 and res["settings"]["finetune"]["recipes"]["25"]["steps"] == 2
    bad_values = [
        ("--protocols=knn,svm", "unknown protocol svm"),
        ("--lowshot=17", "k = 17 needs 1 <= k <= 16"),
        ("--wd-grid=1e-2,nan", "argument --wd-grid: must be >= 0, got nan"),  # every item of a list is checked
        ("--wd-grid=1e-2,-1", "argument --wd-grid: must be >= 0, got -1.0"),
        ("--lowshot-costs=0.1,inf", "argument --lowshot-costs: must be a finite positive number, got inf"),
        ("--lowshot=1,0", "argument --lowshot: must be positive, got 0"),
    ]
    for bad, needle in bad_values:
        assert tool.main([str(exp), bad, "--out", str(tmp_path / "x.json"), "--workers", "0", "--no-linear"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and needle in err[-1], err
        assert not any("Traceback" in ln for ln in err)


def test_evaluate_the_key_and_the_untrained_encoder_beside_the_runs_own_eval(
    labelled_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pcl.data.datasets import IndexedImages, eval_transform
    from pcl.data.sources import resolve_data
    from pcl.eval.frozen import frozen_features
    from pcl.eval.pretrained import PREFIXES, from_checkpoint, recalibrated, untrained
    from pcl.eval.protocols.knn import knn_accuracy

    exp, _ = labelled_run
    run, before = _own_eval(exp)
    ckpt = torch.load(run.last, map_location="cpu", weights_only=False)
    key = from_checkpoint(run.last, "key")
    for name, p in key.backbone.state_dict().items():  # the momentum encoder's tensors, not the query's
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(p, ckpt["model"][PREFIXES["key"] + name]), name
    assert any(
        not torch.equal(ckpt["model"][PREFIXES["key"] + n], ckpt["model"][PREFIXES["query"] + n])
        for n in key.backbone.state_dict()
        if n.endswith("weight")
    )
    kw = {"batch_size": 16, "workers": 0, "show": False, "device": "cpu", "protocols": choose("knn", "clusters"),
          "reference": "none"}  # fmt: skip
    cpu = torch.device("cpu")
    fresh = untrained(key.arch, key.stem, key.image_size, seed=0)
    for encoder, pre in (("key", key), ("untrained", fresh)):
        # the untrained encoder at its initial BatchNorm statistics is the network untrained() builds
        res = evaluate_run(exp, EvalConfig(encoder=encoder, untrained_bn="init", **kw))
        expected = knn_accuracy(frozen_features(pre, res["settings"]["data"], cpu, 16, 0, show=False))
        assert res["knn_top1"] == pytest.approx(expected, abs=1e-9)
        assert res["settings"]["encoder"] == encoder and res["settings"]["knn"]["features"].startswith(encoder)
        assert res["settings"]["written"] == str(exp / f"eval_{encoder}.json")
        assert run.eval.read_bytes() == before  # the query encoder's eval.json is kept
    assert res["cluster"] == {} and "untrained" in res["settings"]["cluster_skipped"]
    assert "untrained" in res["settings"]["source"] and res["settings"]["bn"].startswith("BatchNorm statistics at init")
    # by default its BatchNorm statistics are recomputed on the eval view of the train images (the fair reference)
    train = IndexedImages(resolve_data(res["settings"]["data"]).train, eval_transform(key.image_size))
    calibrated = recalibrated(fresh, train, cpu, 16, 0)
    res = evaluate_run(exp, EvalConfig(encoder="untrained", **kw))
    expected = knn_accuracy(frozen_features(calibrated, res["settings"]["data"], cpu, 16, 0, show=False))
    assert res["knn_top1"] == pytest.approx(expected, abs=1e-9) and "recomputed on 48 images" in res["settings"]["bn"]
    tool = load_tool("evaluate")
    assert tool.main([str(exp), "--encoder", "momentum", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "momentum" in err[-1] and not any("Traceback" in ln for ln in err)
