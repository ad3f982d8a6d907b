"""Suite files (issue 27, defects 2 and 9): every key, flag name and flag value is checked when the file is
loaded, ``--dry-run`` included, with the closest known name; lists outside ``[[sweeps]]``; any suffix."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcl.utils.errors import PCLError
from tests.helpers import TINY_BASE, load_experiments

runner = load_experiments()
from suite import flags_to_argv, load_suite  # noqa: E402 - experiments/ is on the path now

RUN = '[[runs]]\nname = "a"\n'


def dry_run_error(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """The one ``error:`` line of ``run.py PATH --dry-run`` (exit 2, nothing printed on stdout)."""
    assert runner.main([str(path), "DATA", "--out", str(path.parent / "out"), "--dry-run", *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and not captured.out
    assert not (path.parent / "out").exists()
    return lines[0]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("seed = 3\n" + RUN, ["unknown key 'seed'", "did you mean 'seeds'?"]),
        ('descripton = "x"\n' + RUN, ["unknown key 'descripton'", "did you mean 'description'?"]),
        ('[[runs]]\nname = "a"\nflag = { epochs = 1 }\n', ["run 'a'", "unknown key 'flag'", "'flags'"]),
        ('[[runs]]\nname = "a"\nflags = { epochz = 2 }\n', ["no flag --epochz", "did you mean 'epochs'?"]),
        ("[base]\nwarmup_epochs = 2\n" + RUN, ["[base]", "no flag --warmup_epochs", "'warmup-epochs'"]),
        ('[[sweeps]]\nname = "s"\nlrr = [0.1, 0.2]\n', ["no flag --lrr", "did you mean 'lr'?"]),
        ('[[sweeps]]\nname = "s"\nlr = [0.1]\nflags = { epochz = 1 }\n', ["'s' flags", "no flag --epochz"]),
        ('[base]\nconfig = "missing.toml"\n' + RUN, ["config file 'missing.toml'", "does not exist"]),
        ("[base]\nepochs = [1, 2]\n" + RUN, ["epochs = [1, 2] is a list", "[[sweeps]]"]),
        ('[[runs]]\nname = "a"\nflags = { lr = [0.1, 0.2] }\n', ["lr = [0.1, 0.2] is a list"]),
        ("seeds = true\n" + RUN, ["seeds must be a positive integer"]),
        ("description = 3\n" + RUN, ["description must be a string"]),
    ],
)
def test_a_typo_in_a_suite_file_is_one_error_line_at_load_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(PCLError):
        load_suite(str(path))
    line = dry_run_error(path, capsys)
    for needle in needles:
        assert needle in line, line
    assert "dashes" not in line


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ('optimizer = "bogus"', "run 'a': argument --optimizer: invalid choice: 'bogus'"),
        ("lr = -1", "run 'a': --lr"),
        ('amp = "fp17"', "run 'a': argument --amp: invalid choice: 'fp17'"),
        ("batch-size = 64", "run 'a': --batch-size 64 is larger than the queue --pcl-r 16"),
        ("epochs = 1.5", "run 'a': argument --epochs"),
    ],
)
def test_a_bad_flag_value_is_the_flags_own_error_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: str, needle: str
) -> None:
    path = tmp_path / "v.toml"
    path.write_text(f'[base]\n{TINY_BASE}\n[[runs]]\nname = "a"\nflags = {{ {flags} }}\n')
    assert needle in dry_run_error(path, capsys)


def test_a_bad_flag_after_the_double_dash_is_refused_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.toml"
    path.write_text(RUN)
    assert "unrecognized arguments: --epochz" in dry_run_error(path, capsys, "--", "--epochz", "2")


def test_false_for_a_flag_without_a_no_form_leaves_it_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert flags_to_argv({"gpu-aug": False, "mlp": False, "keep-features": True}) == ["--no-mlp", "--keep-features"]
    path = tmp_path / "b.toml"
    path.write_text('[[sweeps]]\nname = "keep"\nkeep-features = [true, false]\n')
    assert runner.main([str(path), "DATA", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "--keep-features --seed 0" in lines[0] and "--keep-features" not in lines[1]  # no --no-keep-features


@pytest.mark.parametrize("name", ["s.TOML", "s.Toml", "s.yaml", "suite"])
def test_a_suite_file_is_toml_whatever_its_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = tmp_path / name
    path.write_text('description = "d"\n[base]\nepochs = 3\n' + RUN)
    assert load_suite(str(path)).base == {"epochs": 3}
    assert runner.main([str(path), "DATA", "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "--epochs 3" in capsys.readouterr().out
    path.write_text("[base\n")
    line = dry_run_error(path, capsys)
    assert "not valid TOML" in line and "JSON" not in line


def test_a_json_suite_and_wrong_kinds_of_suite_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"base": {"epochs": 2}, "runs": [{"name": "a"}]}')
    assert load_suite(str(path)).base == {"epochs": 2}
    assert "is a folder" in dry_run_error(tmp_path, capsys)
    assert dry_run_error(tmp_path / "gone.TOML", capsys).endswith("gone.TOML does not exist")
    ckpt = tmp_path / "last.pth"
    ckpt.write_bytes(b"PK\x03\x04\x00\xff\xfe binary")
    assert "is not a text file" in dry_run_error(ckpt, capsys)
    assert runner.main(["baselin", "--dry-run"]) == 2
    assert "did you mean 'baseline'?" in capsys.readouterr().err
