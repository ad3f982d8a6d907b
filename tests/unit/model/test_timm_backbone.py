"""timm backbones: shapes and patch size of a ViT, what the meta-device probe learns, local weights files, and the
one ``error:`` line of an unknown name, a missing weights file, a hub name and a crop too small for a ConvNeXt.

timm's ``test_vit`` / ``test_convnext`` (0.2-0.3 M parameters, made for timm's own CI) keep these fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pcl import cli
from pcl.model.backbone import BackboneSpec, build_backbone, check_input_sizes, probe_backbone
from pcl.utils.errors import PCLError
from tests.helpers import TINY_ARGS

VIT = BackboneSpec("test_vit", "imagenet", 16, 1, patch_size=4)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_vit_is_a_pooled_trunk_with_the_patch_size_and_takes_smaller_crops() -> None:
    torch.manual_seed(0)
    net, dim = build_backbone(VIT)
    assert dim == 64 and tuple(net.patch_embed.patch_size) == (4, 4)
    assert net.pos_embed.shape[1] == 1 + (16 // 4) ** 2  # class token + 4 x 4 patches of the 16-px image
    assert net(torch.randn(3, 3, 16, 16)).shape == (3, 64)
    assert net(torch.randn(3, 3, 8, 8)).shape == (3, 64)  # a local crop: position embeddings resampled
    assert probe_backbone(VIT).vit and not probe_backbone(VIT).batchnorm
    convnext = probe_backbone(BackboneSpec("test_convnext", "imagenet", 32, 1))
    assert not convnext.vit and convnext.dim == 64


def test_building_draws_the_same_weights_after_the_probe() -> None:
    """The probe runs on the meta device: it draws no random numbers, so a run's weights do not depend on it."""
    torch.manual_seed(1)
    a = build_backbone(VIT)[0].state_dict()
    torch.manual_seed(1)
    probe_backbone.cache_clear()
    probe_backbone(VIT)
    b = build_backbone(VIT)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_initialises_from_a_local_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src, _ = build_backbone(VIT)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(5)
    net, _ = build_backbone(
        BackboneSpec("test_vit", "imagenet", 16, 1, patch_size=4, pretrained=tmp_path / "w.safetensors")
    )
    for k, v in src.state_dict().items():
        assert torch.equal(v, net.state_dict()[k]), k


def test_unknown_timm_name_is_one_error_line_with_close_matches(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main([str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path), "--arch", "vit_tiny_patch16_22"]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "unknown arch 'vit_tiny_patch16_22'" in line and "vit_tiny_patch16_224" in line


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--arch", "test_vit", "--pretrained", "missing.safetensors"], "no such file; weights are never downloaded"),
        (["--arch", "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"], "never fetched from the hub"),
        (["--arch", "test_convnext"], "cannot take 16-px crops"),
    ],
)
def test_bad_backbone_requests_are_one_error_line(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], says: str
) -> None:
    assert cli.main([str(tiny_data), *TINY_ARGS, "--exp-dir", str(tmp_path), *extra]) != 0
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "checkpoints").exists()


def test_patch_size_larger_than_the_image_is_refused() -> None:
    with pytest.raises(PCLError, match="cannot take 16-px crops"):
        check_input_sizes(BackboneSpec("test_vit", "imagenet", 16, 1, patch_size=32), [16])
