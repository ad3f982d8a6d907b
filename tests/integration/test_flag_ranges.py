"""Every numeric flag of main_pcl.py has a declared valid range, checked before anything is built.

The walk feeds each numeric flag NaN, +-inf, 0, -1 and a huge value. Each answer is one ``error:`` line naming
the flag (exit 2), or an acceptance: the value lies in the flag's declared range (``pcl.utils.flags``) and the
program reaches the exp-dir step, where the test stops it. Never a traceback, never a step of training.
"""

from __future__ import annotations

import argparse

import pytest

import pcl.cli
from pcl.config import build_parser, declared_flags
from pcl.utils.errors import PCLError
from pcl.utils.flags import Flag, int_list

HUGE = {int: str(10**18), float: "1e30"}
VALUES = ["nan", "inf", "-inf", "0", "-1", "huge"]
REACHED = "reached the exp-dir step"


def declared() -> dict[str, Flag]:
    """Flag name -> its declaration, for every field in the parser."""
    return declared_flags()


def numeric_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's options whose values are numbers (or comma lists of them)."""
    return [a for a in parser._actions if a.type in (int, float, int_list)]


@pytest.fixture
def stop_at_exp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """The exp-dir step is the first that builds anything: stop there, and make any later build step fail."""

    def stop(*args: object, **kwargs: object) -> None:
        raise PCLError(REACHED)

    def built(*args: object, **kwargs: object) -> None:
        raise AssertionError("a build step ran")

    monkeypatch.setattr(pcl.cli.exp_dir_checks, "prepare", stop)
    monkeypatch.setattr(pcl.cli, "build_trainer", built)


def test_the_walk_covers_every_numeric_flag() -> None:
    names = {a.option_strings[-1] for a in numeric_actions(build_parser())}
    assert {"--lr", "--wd", "--momentum", "--kmeans-nredo", "--num-cluster", "--schedule", "--seed"} <= names
    assert len(names) >= 40


@pytest.mark.usefixtures("stop_at_exp_dir")
def test_every_numeric_flag_refuses_or_documents_each_value(capsys: pytest.CaptureFixture) -> None:
    flags = declared()
    accepted = []
    for action in numeric_actions(build_parser()):
        name = action.option_strings[-1]
        kind = int if action.type is not float else float
        for value in VALUES:
            text = HUGE[kind] if value == "huge" else value
            code = pcl.cli.main([f"{name}={text}"])
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, text, err)
            if REACHED in lines[0]:
                flags[name].check(action.type(text))  # inside the declared range
                accepted.append((name, value))
            else:
                assert name in lines[0], (name, text, lines[0])
    # values whose acceptance the ranges document (0 = off / none, huge = as many as asked)
    assert ("--warmup-epochs", "0") in accepted and ("--knn-freq", "0") in accepted
    assert ("--epochs", "huge") in accepted and ("--clip-grad", "inf") in accepted  # inf: no clipping
    assert not [(n, v) for n, v in accepted if v in ("nan", "-inf", "-1")]
    assert not [(n, v) for n, v in accepted if v == "inf" and n != "--clip-grad"]


@pytest.mark.usefixtures("stop_at_exp_dir")
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--stop-after-epochs", "0"], "--stop-after-epochs must be positive, got 0"),
        (["--momentum", "-5", "--optimizer", "sgd"], "--momentum must be in [0, 1), got -5.0"),
        (["--kmeans-nredo", "0"], "--kmeans-nredo must be positive, got 0"),
        (["--min-lr", "-1"], "--min-lr must be >= 0, got -1.0"),
        (["--wd", "-1"], "--wd must be >= 0, got -1.0"),
        (["--clip-grad", "nan"], "--clip-grad must be positive, got nan"),
        (["--kmeans-niter", "-1"], "--kmeans-niter must be positive, got -1"),
        (["--lr", "inf"], "--lr must be a finite positive number, got inf"),
        (["--wd", "nan"], "--wd must be >= 0, got nan"),
        (["--momentum", "nan"], "--momentum must be in [0, 1), got nan"),
        (["--temperature", "inf"], "--temperature must be a finite positive number, got inf"),
        (["--batch-size", "8", "--bn-splits", "8"], "over 1 process(es) and --bn-splits 8 gives 1 sample"),
        (["--kmeans-max-points", "100", "--num-cluster", "50,200"], "--kmeans-max-points 100 is smaller than"),
        (["--min-lr", "0.5", "--lr", "0.1"], "--min-lr 0.5 is above --lr 0.1"),
        (["--no-aug-plus", "--color-jitter", "1"], "--color-jitter must be <= 0.5 with --no-aug-plus"),
        (["--seed", "-1"], "--seed must be in [0, 2147483647], got -1"),
    ],
)
def test_impossible_values_and_combinations_are_refused_up_front(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture
) -> None:
    assert pcl.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
