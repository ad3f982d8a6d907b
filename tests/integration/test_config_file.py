"""``--config runs/x/config.json --exp-dir runs/x-again`` reruns a run exactly (issue 19)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pcl import cli
from pcl.run.checkpoint import load_checkpoint
from tests.helpers import TINY_ARGS


def tensors(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) checkpoint, keyed by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list | tuple) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{prefix}/{key}").items()}


def test_rerun_from_config_json_is_bit_identical(tiny_data: Path, tmp_path: Path) -> None:
    first, again = tmp_path / "x", tmp_path / "x-again"
    assert cli.main([str(tiny_data), *TINY_ARGS, "--seed", "3", "--exp-dir", str(first)]) == 0
    assert cli.main(["--config", str(first / "config.json"), "--exp-dir", str(again)]) == 0
    a, b = (tensors(load_checkpoint(d / "checkpoints" / "last.pth")) for d in (first, again))
    assert a.keys() == b.keys() and any("/model" in k for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_config_files_values_are_checked_like_flags(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nroot = "{tiny_data}"\n[train]\nepochs = 0\n')
    assert cli.main(["--config", str(cfg)]) == 2  # the file's value is checked like a flag
    assert capsys.readouterr().err == "error: --epochs must be positive, got 0\n"
