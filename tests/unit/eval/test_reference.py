"""The untrained reference beside a trained encoder: the "worse than untrained" mark appears exactly when the
interval of the difference lies below 0, and the reference is compared only when measured the same way."""

from __future__ import annotations

import pcl.eval.protocols  # noqa: F401 - registers the protocols
from pcl.eval.reference import compare, final_knn_lines, lines, matching

MARK = "WORSE than the untrained reference"


def _eval(knn: float, linear: float, encoder: str = "query", n_test: int = 1000) -> dict:
    settings = {"encoder": encoder, "n_test": n_test, "seed": 0, "arch": "resnet18", "stem": "small",
                "image_size": 32, "data_identity": "x", "val": None, "protocols": {"knn": {"k": 200}},
                "source": "untrained resnet18 (seed 0)", "bn": "recalibrated"}  # fmt: skip
    return {"knn_top1": knn, "linear_top1": linear, "settings": settings}


def test_worse_is_marked_exactly_when_the_interval_lies_below_zero() -> None:
    ref = _eval(50.0, 50.0, "untrained")
    # n_test 1000: se of 50 % is 1.58 points; the 95 % half-width of a difference about 4.4 points
    cases = {40.0: "worse", 47.0: "within noise", 53.0: "within noise", 60.0: "better"}
    for knn, word in cases.items():
        block = compare(_eval(knn, 50.0), ref, ["knn", "linear"], "measured now")
        assert block["columns"]["knn"]["verdict"] == word, knn
        assert block["columns"]["linear"]["verdict"] == "within noise"
        assert block["worse"] == (["knn"] if word == "worse" else [])
        text = "\n".join(lines({**_eval(knn, 50.0), "reference": block}))
        assert (MARK in text) == (word == "worse") and (text.count(MARK) == (word == "worse"))
        assert ("warning: worse than the fair untrained reference" in text) == (word == "worse")
    # the same gap on 100 test images is within noise: the mark follows the interval, not the sign
    small = compare(_eval(45.0, 50.0, n_test=100), _eval(50.0, 50.0, "untrained", n_test=100), ["knn"], "x")
    assert small["columns"]["knn"]["verdict"] == "within noise" and small["worse"] == []
    assert lines({"settings": {}}) == []  # no reference block: no lines


def test_a_reference_measured_otherwise_is_not_compared() -> None:
    ref, own = _eval(50.0, 50.0, "untrained"), _eval(40.0, 50.0)
    assert matching(ref, own, ["knn", "linear"]) == ["knn"]  # linear's settings were not recorded by the reference
    other = {**ref, "settings": {**ref["settings"], "seed": 1}}
    assert matching(other, own, ["knn"]) == []


def test_end_of_training_line_states_the_untrained_knn_and_warns_when_worse() -> None:
    line, warning = final_knn_lines(62.0, 40.0, 1000, 0)
    assert "final kNN top-1: 62.00% (untrained reference: 40.00%" in line and warning is None
    line, warning = final_knn_lines(30.0, 40.0, 1000, 0)
    assert warning is not None and "worse than the untrained reference" in warning
    assert final_knn_lines(39.0, 40.0, 1000, 0)[1] is None  # within noise: no warning
    assert final_knn_lines(30.0, None, 1000, 0) == ("final kNN top-1: 30.00%", None)
