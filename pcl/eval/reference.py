"""The fair untrained reference beside a trained encoder: which protocols say training made the features worse.

A trained encoder's figures mean little without the same architecture at random initialisation measured the same
way (same data, seed, draws and settings; BatchNorm statistics recomputed on the train images, so that the random
network is not handicapped by statistics that match no real activation). :func:`compare` sets every summary column
of the compared protocols against the reference: the difference with a 95 % normal interval from the two
evaluations' standard errors (``SummaryColumn.se``: the test images' binomial error and the spread of the draws;
conservative, since both evaluations share the test images and draws) and a verdict — *better*, *worse* (the
interval lies below 0: **worse than the untrained reference**) or *within noise*.

Where the reference comes from (``--reference``): ``auto`` takes ``RUN_DIR/eval_untrained.json`` when it was
measured with the same data, seed and protocol settings (:func:`matching`), else measures it now (and writes that
file when the evaluation is the run's own); a file is read as it is (protocols whose settings differ are not
compared, and say so); ``none`` compares nothing. ``eval.json`` then holds::

    "reference": {"from": "RUN_DIR/eval_untrained.json" | "measured now", "source": "untrained resnet18 (seed 0)",
                  "bn": "...", "method": "...", "columns": {"knn": {"header", "value", "reference", "diff", "lo",
                  "hi", "verdict"}, ...}, "worse": ["finetune_1", ...], "not_compared": {"toy": "why"}}

At the end of a training run with labels, :func:`untrained_knn` measures the same reference for the kNN monitor
(a seeded random network, one BatchNorm recalibration pass and one feature pass) and :func:`final_knn_lines` states
the run's last kNN beside it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcl.analysis.intervals import NO_VERDICT, WORSE, binomial_se, single_interval, verdict
from pcl.eval.registry import PROTOCOLS
from pcl.methods.base import Method
from pcl.model.bn import recalibrate_bn
from pcl.train.engine import Loaders
from pcl.train.monitor import KnnMonitor, MonitorConfig
from pcl.utils.distributed import DistInfo
from pcl.utils.errors import PCLError

COMMON = ("data_identity", "val", "seed", "arch", "stem", "image_size")  # settings both evaluations must share
METHOD = "normal 95 % interval from both evaluations' standard errors (binomial test error and the draws' spread)"


def protocol_settings(protocols: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: settings as JSON values}`` of the chosen protocols (recorded in ``eval.json``, compared here)."""
    import dataclasses

    return json.loads(json.dumps({n: dataclasses.asdict(s) for n, s in protocols.items()}, default=str))


def read_reference(path: Path) -> dict:
    """An ``eval.json`` of an untrained encoder; one ``PCLError`` line when it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise PCLError(f"--reference {path} cannot be read: {e.strerror or e}") from None
    except ValueError as e:
        raise PCLError(f"--reference {path} is not valid JSON: {e}") from None
    settings = doc.get("settings") if isinstance(doc, dict) else None
    if not isinstance(settings, dict) or settings.get("encoder") != "untrained":
        raise PCLError(f"--reference {path} is not the eval.json of an untrained encoder (tools/evaluate.py "
                       "--encoder untrained)")  # fmt: skip
    return doc


def matching(reference: Mapping[str, Any], result: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """The protocols of ``names`` that ``reference`` measured with the settings of ``result`` (same data, seed,
    architecture and protocol settings), so that the two can be compared."""
    ref, own = reference.get("settings") or {}, result.get("settings") or {}
    if any(ref.get(k) != own.get(k) for k in COMMON):
        return []
    ref_p, own_p = ref.get("protocols") or {}, own.get("protocols") or {}
    return [n for n in names if n in ref_p and ref_p[n] == own_p.get(n)]


def compare(result: Mapping[str, Any], reference: Mapping[str, Any], names: Iterable[str], where: str) -> dict:
    """The ``reference`` block of ``eval.json``: every summary column of ``names`` set against the reference."""
    names = list(names)
    columns: dict[str, dict] = {}
    not_compared: dict[str, str] = {}
    for name in names:
        for c in PROTOCOLS[name].columns:
            a, b = c.read(result), c.read(reference)
            if a is None or b is None:
                continue
            se_a, se_b = (c.se(result), c.se(reference)) if c.se is not None else (None, None)
            if se_a is None or se_b is None:
                not_compared[c.key] = "no standard error for this figure"
                continue
            iv = single_interval(a, se_a, b, se_b)
            word = verdict(iv, c.higher_is_better)
            columns[c.key] = {"header": c.header, "value": a, "reference": b, "diff": iv.mean, "lo": iv.lo,
                              "hi": iv.hi, "verdict": word}  # fmt: skip
    ref_settings = reference.get("settings") or {}
    return {
        "from": where,
        "source": ref_settings.get("source"),
        "bn": ref_settings.get("bn"),
        "method": METHOD,
        "columns": columns,
        "worse": [k for k, v in columns.items() if v["verdict"] == WORSE],
        "not_compared": not_compared,
    }


def lines(result: Mapping[str, Any]) -> list[str]:
    """What ``tools/evaluate.py`` prints under its table: one line per compared column, worse ones marked, and a
    warning line naming every protocol where the trained encoder is worse than the untrained reference."""
    block = result.get("reference")
    if not block:
        return []
    out = [f"against the untrained reference ({block.get('source')}; {block.get('bn')}; {block['from']}):"]
    for v in block["columns"].values():
        mark = "  <-- WORSE than the untrained reference" if v["verdict"] == WORSE else ""
        diff = f"{v['diff']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]"
        word = v["verdict"] if v["verdict"] != NO_VERDICT else "no interval"
        out.append(f"  {v['header']}: {v['value']:.2f} vs {v['reference']:.2f}: {diff}, {word}{mark}")
    out += [f"  {key}: not compared ({why})" for key, why in block.get("not_compared", {}).items()]
    worse = [block["columns"][k]["header"] for k in block["worse"]]
    if worse:
        out.append(f"warning: worse than the fair untrained reference on {len(worse)} figure(s): {', '.join(worse)} "
                   "-- training made these figures worse than a random network's")  # fmt: skip
    return out


# ---------------------------------------------------------------------- the end of a training run


class _Features(nn.Module):
    """A method as an images -> L2-normalised trained-backbone features module ``(B, 3, H, W) -> (B, D)``."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.backbone_features(images)


def untrained_knn(fresh: Method, loaders: Loaders, cfg: MonitorConfig, info: DistInfo) -> float | None:
    """kNN top-1 (%) of ``fresh`` (the run's method at random initialisation, seeded as the run was) by the
    training run's kNN monitor (its loaders and ``--knn-k`` / ``--knn-t``, the trained backbone's features), after
    its BatchNorm statistics are recomputed on the eval view of the train images (one forward pass, no labels, no
    gradient); None without a labelled eval split (and off rank 0)."""
    if loaders.knn_train is None or loaders.knn_eval is None or loaders.train_labels is None:
        return None
    recalibrate_bn(_Features(fresh).to(info.device), (images for images, _ in loaders.knn_train), info.device)
    monitor = KnnMonitor(replace(cfg, knn_encoder="query"), fresh, loaders, info, contextlib.nullcontext, epochs=1)
    return monitor.evaluate(label="untrained kNN")


def final_knn_lines(knn: float, reference: float | None, n_eval: int, seed: int) -> tuple[str, str | None]:
    """The run's last line about kNN, beside the untrained reference's, and a warning when it is worse (beyond the
    95 % interval of two accuracies on ``n_eval`` images)."""
    if reference is None:
        return f"final kNN top-1: {knn:.2f}%", None
    iv = single_interval(knn, binomial_se(knn, n_eval), reference, binomial_se(reference, n_eval))
    line = (f"final kNN top-1: {knn:.2f}% (untrained reference: {reference:.2f}%, the same network at random init, "
            f"seed {seed}, BatchNorm statistics recomputed on the train images; difference {iv.text()})")  # fmt: skip
    if verdict(iv) != WORSE:
        return line, None
    return line, ("warning: the final kNN top-1 is worse than the untrained reference's: training made the frozen "
                  "features worse than a random network's (tools/evaluate.py RUN compares every protocol)")  # fmt: skip
