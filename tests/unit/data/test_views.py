"""Views as a list: the view spec (helpers, validation), and 2 global + 2 local crops on the PIL path (through the
DataLoader's default collate) and on the kornia path, with each group's crop scale range respected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from pcl.data.augment import AugConfig
from pcl.data.datasets import IndexedImageFolder, MultiView, train_loader
from pcl.data.gpu_aug import GpuAugLoader
from pcl.data.image_cache import attach_cache
from pcl.data.views import CropGroup, ViewSpec
from pcl.utils.errors import PCLError

GLOBAL_SCALE, LOCAL_SCALE = (0.4, 1.0), (0.05, 0.14)
SPEC = ViewSpec((CropGroup(2, 16, GLOBAL_SCALE, "global"), CropGroup(2, 8, LOCAL_SCALE, "local")))


def test_spec_helpers() -> None:
    spec = ViewSpec((*SPEC.groups, CropGroup(3, 6, (0.05, 0.2), "local")))
    spec.validate()
    assert spec.num_views == 7 and spec.num_global == 2
    assert spec.global_indices == (0, 1) and spec.local_indices == (2, 3, 4, 5, 6)
    assert spec.sizes == (16, 16, 8, 8, 6, 6, 6)
    assert spec.kinds == ("global", "global", "local", "local", "local", "local", "local")
    assert [(g.size, s) for g, s in spec.group_slices()] == [(16, slice(0, 2)), (8, slice(2, 4)), (6, slice(4, 7))]
    assert spec.size_slices() == [(16, slice(0, 2)), (8, slice(2, 4)), (6, slice(4, 7))]
    same = ViewSpec((CropGroup(1, 16, (0.4, 1.0)), CropGroup(1, 16, (0.2, 1.0)), CropGroup(4, 8, LOCAL_SCALE, "local")))
    assert same.size_slices() == [(16, slice(0, 2)), (8, slice(2, 6))]  # two groups of one size: one run


def test_default_spec_is_two_global_crops_of_the_image_size() -> None:
    spec = AugConfig(image_size=24, crop_min=0.3).view_spec()
    assert spec == ViewSpec((CropGroup(2, 24, (0.3, 1.0), "global"),))
    assert spec.num_views == 2 and spec.global_indices == (0, 1) and spec.local_indices == ()


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((), "no crop groups"),
        ((CropGroup(2, 8, LOCAL_SCALE, "local"),), "no global crops"),
        ((CropGroup(0, 16, GLOBAL_SCALE),), "number of global crops must be an integer >= 1, got 0"),
        ((CropGroup(2, 0, GLOBAL_SCALE),), r"crop size must be an integer in \(0, 4096\] px, got 0"),
        ((CropGroup(2, -8, GLOBAL_SCALE),), "crop size must be .* got -8"),
        ((CropGroup(2, 16, (0.0, 1.0)),), r"scale range must lie in \(0, 1\] with min <= max, got \(0, 1\)"),
        ((CropGroup(2, 16, (0.2, 1.5)),), r"scale range must lie in \(0, 1\] .* got \(0.2, 1.5\)"),
        ((CropGroup(2, 16, (0.6, 0.4)),), r"min <= max, got \(0.6, 0.4\)"),
        ((CropGroup(2, 16, (0.2,)),), r"two numbers \(min, max\)"),
        ((CropGroup(2, 16, GLOBAL_SCALE, "medium"),), "kind must be one of global, local, got 'medium'"),
        ((SPEC.groups[1], SPEC.groups[0]), "global crop groups must come before local ones"),
    ],
    ids=["empty", "zero-global", "count-0", "size-0", "size-negative", "scale-0", "scale-above-1", "scale-reversed",
         "scale-one-number", "kind", "local-first"],
)  # fmt: skip
def test_a_bad_spec_is_one_error_line(groups: tuple[CropGroup, ...], message: str) -> None:
    with pytest.raises(PCLError, match=message) as e:
        ViewSpec(groups).validate()
    assert "\n" not in str(e.value)


def test_bad_spec_is_refused_by_both_paths() -> None:
    bad = ViewSpec((CropGroup(2, 8, LOCAL_SCALE, "local"),))
    with pytest.raises(PCLError, match="no global crops"):
        MultiView.from_spec(bad, AugConfig(image_size=16))
    with pytest.raises(PCLError, match="no global crops"):
        GpuAugLoader(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), AugConfig(), 2, 0, torch.device("cpu"), spec=bad)


def test_pil_path_gives_a_list_of_views_batched_per_view_by_the_default_collate(tiny_data: Path) -> None:
    cfg = AugConfig(image_size=16, blur_prob=0.5)
    views = MultiView.from_spec(SPEC, cfg)(Image.new("RGB", (16, 16), (90, 160, 30)))
    assert [tuple(v.shape) for v in views] == [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2
    ds = IndexedImageFolder(tiny_data / "train", MultiView.from_spec(SPEC, cfg))
    torch.manual_seed(0)
    batches = list(train_loader(ds, 8, 0, seed=0))
    assert len(batches) == 48 // 8
    for views, index in batches:
        assert isinstance(views, list) and len(views) == SPEC.num_views and index.shape == (8,)
        assert [tuple(v.shape) for v in views] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 2
        assert all(v.dtype == torch.float32 for v in views)
        assert not torch.equal(views[0], views[1]) and not torch.equal(views[2], views[3])  # independent views


def test_kornia_path_gives_the_same_list_with_one_call_per_crop_group(tiny_data: Path) -> None:
    cfg = AugConfig(image_size=16, blur_prob=0.5)
    ds = IndexedImageFolder(tiny_data / "train")
    attach_cache([ds], "yes", 64, show=False)
    torch.manual_seed(0)
    gpu = GpuAugLoader(ds.cache.as_tensor(), cfg, 8, seed=0, device=torch.device("cpu"), spec=SPEC)
    assert len(gpu.augs) == len(SPEC.groups) == 2
    calls: list[tuple[int, ...]] = []
    for aug in gpu.augs:
        aug.register_forward_hook(lambda _m, inp, _out: calls.append(tuple(inp[0].shape)))
    pil = train_loader(IndexedImageFolder(tiny_data / "train", MultiView.from_spec(SPEC, cfg)), 8, 0, seed=0)
    for (g_views, g_index), (p_views, p_index) in zip(gpu, pil, strict=True):
        assert torch.equal(g_index, p_index)  # the same sampler: the same images in the same order
        assert [v.shape for v in g_views] == [v.shape for v in p_views]
        assert not torch.equal(g_views[0], g_views[1]) and not torch.equal(g_views[2], g_views[3])
    assert calls == [(16, 3, 16, 16), (16, 3, 16, 16)] * (48 // 8)  # count x batch per call, one call per group


def test_kornia_path_with_the_default_spec_gives_two_views() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8)
    gpu = GpuAugLoader(images, AugConfig(image_size=12), 8, seed=0, device=torch.device("cpu"))
    views, index = next(iter(gpu))
    assert gpu.spec == AugConfig(image_size=12).view_spec() and len(gpu.augs) == 1
    assert len(views) == 2 and all(v.shape == (8, 3, 12, 12) for v in views) and index.shape == (8,)


def _pil_areas(spec: ViewSpec, n_images: int, monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """Area fraction of every crop the PIL views of ``spec`` take from a 128x128 image, per view index."""
    drawn: list[float] = []
    get_params = transforms.RandomResizedCrop.get_params

    def spy(img: Image.Image, scale: list[float], ratio: list[float]) -> tuple[int, int, int, int]:
        i, j, h, w = get_params(img, scale, ratio)
        drawn.append(h * w / (img.size[0] * img.size[1]))
        return i, j, h, w

    monkeypatch.setattr(transforms.RandomResizedCrop, "get_params", staticmethod(spy))
    multi, img = MultiView.from_spec(spec, AugConfig(image_size=16)), Image.new("RGB", (128, 128))
    torch.manual_seed(0)
    for _ in range(n_images):
        multi(img)
    return [drawn[v :: spec.num_views] for v in range(spec.num_views)]


def _kornia_areas(gpu: GpuAugLoader, group: int, n: int, size: int = 128) -> np.ndarray:
    crop = gpu.augs[group][0]  # the RandomResizedCrop the loader really uses for this group
    src = crop.forward_parameters(torch.Size([n, 3, size, size]))["src"]  # (n, 4, 2) inclusive corners
    return ((src[:, 1, 0] - src[:, 0, 0] + 1) * (src[:, 2, 1] - src[:, 1, 1] + 1) / size**2).numpy()


def test_each_crop_group_keeps_to_its_scale_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local crops take 5-14 % of the image, global ones 40-100 %, on both paths (500 crops per view and more)."""
    per_view = _pil_areas(SPEC, 500, monkeypatch)
    torch.manual_seed(0)
    gpu = GpuAugLoader(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), AugConfig(), 2, 0, torch.device("cpu"), spec=SPEC)
    kor = [_kornia_areas(gpu, 0, 2000), _kornia_areas(gpu, 1, 2000)]
    tol = 0.01  # integer crop sides on a 128 px image
    cases = [(per_view[0], GLOBAL_SCALE), (per_view[1], GLOBAL_SCALE), (per_view[2], LOCAL_SCALE)]
    cases += [(per_view[3], LOCAL_SCALE), (kor[0], GLOBAL_SCALE), (kor[1], LOCAL_SCALE)]
    for areas, (lo, hi) in cases:
        a = np.asarray(areas)
        assert a.size >= 500 and lo - tol <= a.min() and a.max() <= hi + tol
        assert a.max() - a.min() > 0.6 * (hi - lo)  # spread over the range, not one value


def test_crop_flags_give_the_view_spec_with_local_crops() -> None:
    """``--local-crops 4`` at 32 px: two global crops of 32 px at (crop-min, 1), four local ones of 16 px at
    (0.05, crop-min) (the defaults: SwAV's and DINO's local scale ends where the global one starts)."""
    from pcl.config import parse_config

    cfg = parse_config(["--local-crops", "4", "--crop-min", "0.3"])
    spec = cfg.data.aug.view_spec()
    assert spec == ViewSpec((CropGroup(2, 32, (0.3, 1.0), "global"), CropGroup(4, 16, (0.05, 0.3), "local")))
    assert cfg.data.aug.local_crop_size == 16 and cfg.data.aug.local_crop_scale == [0.05, 0.3]  # resolved
    argv = ["--image-size", "224", "--global-crops", "3", "--local-crops", "6", "--local-crop-scale", "0.05,0.14"]
    spec = parse_config(argv).data.aug.view_spec()
    assert spec.sizes == (224,) * 3 + (96,) * 6 and spec.groups[1].scale == (0.05, 0.14)
    spec = parse_config(["--local-crops", "2", "--local-crop-size", "12"]).data.aug.view_spec()
    assert spec.sizes == (32, 32, 12, 12)


def test_zero_local_crops_is_the_two_crop_spec() -> None:
    from pcl.config import parse_config

    aug = parse_config(["--image-size", "24", "--crop-min", "0.3"]).data.aug
    assert aug.view_spec() == ViewSpec.two_crops(24, 0.3) and aug.local_crop_size is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--global-crops", "0"], "--global-crops must be in"),
        (["--local-crops", "-1"], "--local-crops must be in"),
        (["--local-crops", "2", "--local-crop-scale", "0.1"], "--local-crop-scale must be two numbers"),
        (["--local-crops", "2", "--local-crop-scale", "0.3,0.1"], "MIN <= MAX"),
        (["--local-crops", "2", "--local-crop-scale", "0,0.1"], "--local-crop-scale must be in"),
        (["--local-crops", "2", "--local-crop-size", "0"], "--local-crop-size must be in"),
    ],
)
def test_bad_crop_flags_are_one_error_line(argv: list[str], message: str) -> None:
    from pcl.config import parse_config

    with pytest.raises(PCLError, match=message) as e:
        parse_config(argv).data.validate()
    assert "\n" not in str(e.value)


def test_moco_and_pcl_refuse_fewer_than_two_global_crops() -> None:
    from pcl.config import parse_config, validate

    for method in ("moco", "pcl"):
        with pytest.raises(PCLError, match="needs at least 2 global crops") as e:
            validate(parse_config(["--method", method, "--global-crops", "1"]))
        assert "\n" not in str(e.value)
