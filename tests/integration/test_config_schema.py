"""Schema walk (issue 27, item 1): every key of ``config.json`` and of a suite file's flag tables, given a bad
value of each kind — wrong type, out of its flag's range, an unknown choice, an unknown key — through both a
``--config`` file and a suite file, is one ``PCLError`` line with the flag's (or key's) own message, before
anything is built."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path

import pytest

from pcl.config import Config, _fields, parse_config, to_dict, validate
from pcl.utils.errors import PCLError
from pcl.utils.flags import Flag, flag_of
from tests.helpers import load_experiments

BadValue = tuple[str, object, str]  # (kind, value, the message must contain)


def _section_path() -> dict[str, tuple[str, ...]]:
    """Flag dest -> its key path in ``config.json`` (``("model", "arch")``, ``("estep", "kmeans", "niter")``)."""
    out: dict[str, tuple[str, ...]] = {}

    def walk(d: dict, where: tuple[str, ...]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, (*where, k))
            else:
                out.setdefault(k, (*where, k))

    walk(to_dict(Config()), ())
    return out


def _owner_path(owner: type, obj: object = None, where: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Key path in ``config.json`` of the (nested) section whose dataclass is ``owner`` (``()``: ``Config``); field
    names repeat across sections (``loss.temperature``, ``swav.temperature``), so a bare key is ambiguous."""
    obj = Config() if obj is None else obj
    if type(obj) is owner:
        return where
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and (found := _owner_path(owner, value, (*where, f.name))) is not None:
            return found
    return None


def _hint(owner: type, name: str) -> object:
    return typing.get_type_hints(owner)[name]


def _base(hint: object) -> object:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def _outside(spec: Flag) -> float | None:
    """A number just outside the flag's declared range (None when it has none)."""
    if spec.gt is not None:
        return spec.gt - 1
    if spec.ge is not None:
        return spec.ge - 1
    if spec.lt is not None:
        return spec.lt + 1
    if spec.le is not None:
        return spec.le + 1
    return math.inf if spec.finite else None


def bad_values(owner: type, f: dataclasses.Field) -> list[BadValue]:
    spec, hint = flag_of(f), _base(_hint(owner, f.name))
    out: list[BadValue] = []
    if hint is bool:
        out.append(("type", "yes", "must be true or false"))
    elif hint in (int, float):
        out.append(("type", "many", "must be"))
    elif typing.get_origin(hint) is list:
        out.append(("type", "x", "must be a list of"))
    elif hint in (str, Path):
        out.append(("type", 3, "must be a string" if hint is str else "must be a path"))
    if spec.choices is not None:
        out.append(("choice", "bogus", f"{spec.name} must be one of"))
    if hint in (int, float) and (v := _outside(spec)) is not None:
        value: object = int(v) if hint is int and math.isfinite(v) else v
        out.append(("range", value, f"{spec.name} must be"))
    if typing.get_origin(hint) is list and spec.numeric and (v := _outside(spec)) is not None:
        out.append(("range", [int(v)], f"{spec.name} must be"))
    return out


def cases() -> list[tuple[str, tuple[str, ...], str, object, str]]:
    paths = _section_path()
    out = []
    for owner, f, prefix in _fields(Config):
        spec = flag_of(f)
        if not spec.names[0].startswith("-"):
            continue  # the positional DATA
        path = paths[prefix + f.name] if prefix + f.name in paths else paths[f.name]
        if (section := _owner_path(owner)) is not None:
            path = (*section, f.name)
        out += [(spec.name, path, *bad) for bad in bad_values(owner, f)]
    return out


CASES = cases()


def _toml_value(v: object) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return json.dumps(v)


def _config_file(tmp: Path, path: tuple[str, ...], value: object) -> Path:
    section, key = ".".join(path[:-1]), path[-1]
    text = f"[{section}]\n{key} = {_toml_value(value)}\n" if section else f"{key} = {_toml_value(value)}\n"
    file = tmp / "c.toml"
    file.write_text(text)
    return file


def test_the_walk_covers_every_flag_and_every_kind() -> None:
    names = {c[0] for c in CASES}
    assert len(names) >= 70 and {"--lr", "--amp", "--kmeans-init", "--num-cluster", "--method"} <= names
    assert {c[2] for c in CASES} == {"type", "choice", "range"}


@pytest.mark.parametrize(("flag", "path", "kind", "value", "expected"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_a_bad_value_in_a_config_file_is_the_flags_message(
    tmp_path: Path, flag: str, path: tuple[str, ...], kind: str, value: object, expected: str
) -> None:
    file = _config_file(tmp_path, path, value)
    with pytest.raises(PCLError) as e:
        validate(parse_config(["--config", str(file)]))
    message = str(e.value)
    assert expected in message and "\n" not in message, message
    if kind == "type":
        assert repr(".".join(path)) in message  # names the key


def test_an_unknown_key_in_every_section_of_a_config_file(tmp_path: Path) -> None:
    for section in [k for k, v in to_dict(Config()).items() if isinstance(v, dict)] + ["estep.kmeans"]:
        file = tmp_path / "c.toml"
        file.write_text(f"[{section}]\nnope = 1\n")
        with pytest.raises(PCLError, match=rf"unknown key '{section}\.nope'"):
            parse_config(["--config", str(file)])


SUITE_CASES = [c for c in CASES if c[2] != "type" or (isinstance(c[3], str) and c[3] != "yes")]


@pytest.mark.parametrize(
    ("flag", "path", "kind", "value", "expected"), SUITE_CASES, ids=[f"{c[0]}-{c[2]}" for c in SUITE_CASES]
)
def test_a_bad_value_in_a_suite_file_is_the_flags_message(
    tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, path: tuple[str, ...], kind: str, value: object,
    expected: str,
) -> None:
    """The same values through a suite file's ``[base]`` (a flag table: values are written on the command line, so
    a wrong type is argparse's message for that flag); caught at load time, ``--dry-run`` included."""
    runner = load_experiments()
    from suite import RUNNER_FLAGS  # the runner's own flags: refused in a suite whatever their value

    value = ",".join(map(str, value)) if isinstance(value, list) else value
    suite = tmp_path / "s.toml"
    suite.write_text(f'description = "x"\n[base]\n{flag.removeprefix("--")} = {_toml_value(value)}\n'
                     '[[runs]]\nname = "r"\n')  # fmt: skip
    assert runner.main([str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: s.toml"), err
    message = err[0]
    if flag.removeprefix("--") in RUNNER_FLAGS:
        assert f"{flag} is set by the runner" in message, message
    elif kind == "range":
        assert expected in message, message
    else:  # on a command line, argparse's own message for the flag: "argument --stem: invalid choice: 'bogus' ..."
        assert "argument " in message and flag in message and str(value) in message, message


def test_an_unknown_key_of_a_suite_file_is_named_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runner = load_experiments()
    suite = tmp_path / "s.toml"
    suite.write_text('description = "x"\n[base]\nepochz = 2\n[[runs]]\nname = "r"\n')
    assert runner.main([str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert "no flag --epochz (did you mean 'epochs'?)" in capsys.readouterr().err
