"""Every tool's numeric flags declare a valid range, and bad values are one ``error:`` line (issue 20, defect 5).

Each tool's ``main`` is run until it parses its command line; the parser it built is captured there (every
tool uses ``pcl.utils.cli.ErrorParser``) and its numeric flags are fed NaN, +-inf, 0, -1 and a huge value.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pcl.utils.cli import ErrorParser, pythonpath_env
from pcl.utils.flags import Ranged
from tests.helpers import ROOT, load_experiments, load_tool

TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py") if "def main(" in p.read_text())
EXPERIMENTS = ["run", "summarize", "bn_effect"]
VALUES = ["nan", "inf", "-inf", "0", "-1", str(10**18)]


class Captured(Exception):
    """Raised by the patched ``parse_args`` with the parser a tool built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def load_experiment(name: str) -> ModuleType:
    """Import ``experiments/<name>.py`` as the runner does (``experiments/`` on the path)."""
    load_experiments()
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parser_of(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The command-line parser ``module.main`` builds (captured before it parses anything)."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Captured(self)

    monkeypatch.setattr(ErrorParser, "parse_args", capture)
    monkeypatch.setattr(ErrorParser, "parse_known_args", capture)
    monkeypatch.setattr(sys, "argv", [module.__name__])
    with pytest.raises(Captured) as got:
        module.main() if module.main.__code__.co_argcount == 0 else module.main([])
    return got.value.parser


@pytest.mark.parametrize("name", [f"tools/{t}" for t in TOOLS] + [f"experiments/{e}" for e in EXPERIMENTS])
def test_every_numeric_tool_flag_declares_a_range_and_refuses_non_finite(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, stem = name.split("/")
    module = load_tool(stem) if folder == "tools" else load_experiment(stem)
    parser = parser_of(module, monkeypatch)
    assert isinstance(parser, ErrorParser)
    undeclared = [a.option_strings for a in parser._actions if a.type in (int, float)]
    assert undeclared == [], f"{name}: numeric flags without a declared range"
    lists = [a for a in parser._actions if isinstance(a.default, list | tuple) and a.default and a.type is not None]
    unchecked = [a.option_strings for a in lists if not isinstance(a.type, Ranged) and _numeric_items(a.default)]
    assert unchecked == [], f"{name}: comma-list flags of numbers without a declared range"
    for action in (a for a in parser._actions if isinstance(a.type, Ranged)):
        for text in VALUES:
            try:
                value = action.type(text)
            except argparse.ArgumentTypeError as e:
                # "expected comma-separated ...": a comma-list flag (int_list, float_list) given a non-number
                assert str(e).startswith(("must be", "invalid", "expected")), (action.option_strings, text, str(e))
                assert "\n" not in str(e)
                continue
            assert text not in ("nan", "inf", "-inf", "-1"), (name, action.option_strings, text)
            action.type.spec.check(value)  # accepted: inside the declared range
        if isinstance(action.type, Ranged) and action.type.spec.type.__name__.endswith("_list"):
            for text in ("nan", "inf", "-1"):  # a bad item after a good one: every element is checked
                with pytest.raises(argparse.ArgumentTypeError):
                    action.type(f"1,{text}")


def _numeric_items(default: list | tuple) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in default)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["tools/evaluate.py", "runs/x", "--val-fraction", "1.5"],
            "argument --val-fraction: must be in (0, 1), got 1.5",
        ),
        (["tools/knn_eval.py", "--knn-k", "nan"], "argument --knn-k: invalid int value: 'nan'"),
        (["tools/bench_step.py", "--temperature", "inf"], "argument --temperature: must be a finite positive number"),
        (["experiments/run.py", "x", "--seeds", "0"], "argument --seeds: must be positive, got 0"),
    ],
)
def test_a_tools_bad_number_is_one_error_line(argv: list[str], expected: str) -> None:
    cmd = [sys.executable, str(ROOT / argv[0]), *argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env(ROOT), timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {expected}"), proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and not proc.stdout


def test_plot_curves_on_a_json_that_is_not_a_run_record_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"runs": []}')
    cmd = [sys.executable, str(ROOT / "tools" / "plot_curves.py"), str(run), "--out", str(tmp_path / "c.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env(ROOT), timeout=300)
    assert proc.returncode == 2 and not list(tmp_path.glob("*.png"))
    assert proc.stderr == (
        f"error: {run / 'metrics.json'} is not a run record: expected main_pcl.py's metrics.json, a JSON object "
        'whose "epochs" is a list of {"epoch": N, ...}\n'
    )
