"""The one augmentation recipe and its two renderings: the PIL rendering is bit-identical to the former
hand-written ``train_transform`` (same ops, order, parameters and random stream), the kornia rendering has the
former ``kornia_train_aug``'s modules and gives its output under the same seed; a registered recipe is used."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn
from torchvision import transforms

from pcl.data import augment
from pcl.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugConfig,
    HorizontalFlip,
    Normalize,
    ResizedCrop,
    ToTensor,
    blur_kernel_size,
    build_recipe,
    kornia_train_aug,
    register_recipe,
    train_transform,
)
from pcl.data.datasets import MultiView, TwoCrops
from pcl.data.sources import BUNDLED_ARCHIVE
from pcl.data.views import CropGroup, ViewSpec
from pcl.utils.errors import PCLError

# --- the former pipelines, copied verbatim (less docstrings) as the references ---------------------------------


class _RefGaussianBlur:
    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = sigma

    def __call__(self, x: Image.Image) -> Image.Image:
        s = float(torch.empty(1).uniform_(*self.sigma))
        return x.filter(ImageFilter.GaussianBlur(radius=s))


def _ref_train_transform(cfg: AugConfig) -> transforms.Compose:
    cfg = cfg.resolved()
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    crop = transforms.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_min, 1.0))
    j = cfg.color_jitter
    if cfg.aug_plus:
        ops = [
            crop,
            transforms.RandomApply([transforms.ColorJitter(j, j, j, j / 4)], p=cfg.color_jitter_prob),
            transforms.RandomGrayscale(p=cfg.grayscale_prob),
            transforms.RandomApply([_RefGaussianBlur()], p=cfg.blur_prob),
        ]
    else:
        ops = [crop, transforms.RandomGrayscale(p=cfg.grayscale_prob), transforms.ColorJitter(j, j, j, j)]
    return transforms.Compose([*ops, transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])


def _ref_kornia_train_aug(cfg: AugConfig) -> nn.Module:
    import kornia.augmentation as K

    cfg = cfg.resolved()
    s, j = cfg.image_size, cfg.color_jitter
    crop = K.RandomResizedCrop((s, s), scale=(cfg.crop_min, 1.0))
    if cfg.aug_plus:
        ops = [
            crop,
            K.ColorJitter(j, j, j, j / 4, p=cfg.color_jitter_prob),
            K.RandomGrayscale(p=cfg.grayscale_prob),
            K.RandomGaussianBlur(blur_kernel_size(s), (0.1, 2.0), p=cfg.blur_prob),
        ]
    else:
        ops = [crop, K.RandomGrayscale(p=cfg.grayscale_prob), K.ColorJitter(j, j, j, j, p=1.0)]
    ops = [op for op in ops if getattr(op, "p", 1.0) > 0]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return nn.Sequential(*ops, K.RandomHorizontalFlip(), K.Normalize(mean, std))


# the settings compared: MoCo v2 at 32 px (no blur), MoCo v1, MoCo v2 with blur, a smaller crop of other strengths
CONFIGS = [
    AugConfig(),
    AugConfig(aug_plus=False, color_jitter=0.4),
    AugConfig(image_size=64, blur_prob=0.5),
    AugConfig(image_size=24, crop_min=0.08, color_jitter=0.8, color_jitter_prob=0.5, grayscale_prob=0.5, blur_prob=1),
]
IDS = ["mocov2-32px", "mocov1", "mocov2-blur", "mocov2-other-strengths"]


@pytest.fixture(scope="module")
def real_images() -> list[Image.Image]:
    """12 CIFAR-10 JPEGs of the bundled subset (32x32) and two enlarged, non-square copies (96x72, 40x56)."""
    out: list[Image.Image] = []
    with tarfile.open(BUNDLED_ARCHIVE) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                out.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
            if len(out) == 12:
                break
    return [*out, out[0].resize((96, 72), Image.BICUBIC), out[1].resize((40, 56), Image.BICUBIC)]


def _views(transform: object, images: list[Image.Image], seed: int, repeats: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [transform(img) for _ in range(repeats) for img in images]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_pil_rendering_is_bit_identical_to_the_former_train_transform(
    cfg: AugConfig, real_images: list[Image.Image]
) -> None:
    """Same views, and the same torch random state afterwards (every coin drawn as before), for three seeds."""
    for seed in range(3):
        ref = _views(_ref_train_transform(cfg), real_images, seed)
        ref_state = torch.get_rng_state()
        new = _views(train_transform(cfg), real_images, seed)
        assert torch.equal(torch.get_rng_state(), ref_state)
        assert len(ref) == len(new) == 3 * len(real_images)
        for a, b in zip(ref, new, strict=True):
            assert a.shape == b.shape == (3, cfg.image_size, cfg.image_size) and torch.equal(a, b)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_default_view_spec_gives_the_former_two_crops(cfg: AugConfig, real_images: list[Image.Image]) -> None:
    """``MultiView`` of the default spec == ``TwoCrops`` of the former transform, image after image."""
    spec = cfg.view_spec()
    assert spec.num_views == 2 and spec.global_indices == (0, 1)
    multi, ref = MultiView.from_spec(spec, cfg), TwoCrops(_ref_train_transform(cfg))
    for seed in range(2):
        torch.manual_seed(seed)
        a = [multi(img) for img in real_images]
        torch.manual_seed(seed)
        b = [ref(img) for img in real_images]
        for va, vb in zip(a, b, strict=True):
            assert len(va) == len(vb) == 2 and all(torch.equal(x, y) for x, y in zip(va, vb, strict=True))
            assert not torch.equal(va[0], va[1])  # two independent views


def _settings(m: nn.Module) -> dict[str, object]:
    """Every public setting of a kornia module and of its parameter generator (tensors as lists, samplers by repr)."""

    def plain(v: object) -> object:
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v if isinstance(v, int | float | bool | str | tuple | type(None)) else repr(v)

    gen = getattr(m, "_param_generator", None)
    own = {k: plain(v) for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
    return {**own, **{f"generator.{k}": plain(v) for k, v in vars(gen or nn.Module()).items() if not k.startswith("_")}}


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_kornia_rendering_has_the_former_modules_and_output(cfg: AugConfig) -> None:
    new, ref = kornia_train_aug(cfg), _ref_kornia_train_aug(cfg)
    assert [type(m) for m in new] == [type(m) for m in ref]
    assert [repr(m) for m in new] == [repr(m) for m in ref]
    for m_new, m_ref in zip(new, ref, strict=True):  # scale, ratio, strengths, sigma, kernel, p, mean, std
        assert _settings(m_new) == _settings(m_ref)
    x = torch.rand(16, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    a = ref(x)
    torch.manual_seed(3)
    b = new(x)
    assert a.shape == (16, 3, cfg.image_size, cfg.image_size) and torch.equal(a, b)


def test_kornia_rendering_leaves_out_the_ops_that_never_apply() -> None:
    """blur at 32 px (p = 0), jitter and grayscale at p = 0 cost nothing on the device; PIL still draws their coins."""
    cfg = AugConfig(color_jitter_prob=0.0, grayscale_prob=0.0)  # blur_prob resolves to 0 at 32 px
    names = [type(m).__name__ for m in kornia_train_aug(cfg)]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "Normalize"]
    pil = [type(t).__name__ for t in train_transform(cfg).transforms]
    assert pil == ["RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply", "RandomHorizontalFlip",
                   "ToTensor", "Normalize"]  # fmt: skip


def test_recipe_of_a_crop_group_takes_its_size_and_scale() -> None:
    cfg = AugConfig(image_size=32, blur_prob=0.5)
    recipe = build_recipe(cfg, CropGroup(6, 96, (0.05, 0.14), "local"))
    assert recipe.name == "mocov2" and recipe.ops[0] == ResizedCrop(96, (0.05, 0.14))
    assert recipe.ops[3].kernel_size == blur_kernel_size(96) == 9  # the kornia kernel follows the crop size
    crop = recipe.pil().transforms[0]
    assert crop.size == (96, 96) and crop.scale == (0.05, 0.14)
    k = recipe.kornia()[0]
    assert k.flags["size"] == (96, 96) and k._param_generator.scale == (0.05, 0.14)
    assert build_recipe(replace(cfg, aug_plus=False), None).name == "mocov1"


def test_a_registered_recipe_is_rendered_for_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """One builder + ``@register_recipe``: a crop group naming it gets it on the PIL and on the kornia path."""
    monkeypatch.setattr(augment, "RECIPES", dict(augment.RECIPES))  # the registration is undone after the test

    @register_recipe("crop-flip")
    def crop_flip(cfg: AugConfig, group: CropGroup) -> list:
        return [ResizedCrop(group.size, group.scale), HorizontalFlip(), ToTensor(), Normalize()]

    with pytest.raises(ValueError, match="registered twice"):
        register_recipe("crop-flip")(crop_flip)
    spec = ViewSpec((CropGroup(2, 16, (0.2, 1.0)), CropGroup(1, 8, (0.05, 0.2), "local", recipe="crop-flip")))
    views = MultiView.from_spec(spec, AugConfig(image_size=16))(Image.new("RGB", (32, 32), (200, 30, 30)))
    assert [v.shape[-1] for v in views] == [16, 16, 8]
    red = (torch.tensor([200, 30, 30]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(views[2], red.view(3, 1, 1).expand(3, 8, 8), atol=1e-6, rtol=0)  # no colour op
    names = [type(m).__name__ for m in build_recipe(AugConfig(), spec.groups[1]).kornia()]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "Normalize"]


def test_an_unknown_recipe_is_one_error_line() -> None:
    with pytest.raises(PCLError, match="unknown augmentation recipe 'byol'; choose from mocov1, mocov2") as e:
        build_recipe(AugConfig(), CropGroup(2, 32, (0.2, 1.0), recipe="byol"))
    assert "\n" not in str(e.value)
