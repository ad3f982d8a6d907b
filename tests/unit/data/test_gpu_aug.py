"""--gpu-aug (kornia) on CPU: view shapes and value ranges, and parameter statistics against the PIL pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import transforms

from pcl.data.augment import IMAGENET_MEAN, IMAGENET_STD, AugConfig, blur_kernel_size, kornia_train_aug, train_transform
from pcl.data.datasets import IndexedImageFolder, MultiView, train_loader
from pcl.data.gpu_aug import GpuAugLoader
from pcl.data.image_cache import attach_cache

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_views_have_the_pil_pipelines_shape_dtype_and_value_range(tiny_data: Path) -> None:
    cfg = AugConfig(image_size=12, blur_prob=0.5)
    ds = IndexedImageFolder(tiny_data / "train", MultiView.from_spec(cfg.view_spec(), cfg))
    attach_cache([ds], "yes", 64, show=False)
    torch.manual_seed(0)
    gpu = GpuAugLoader(ds.cache.as_tensor(), cfg, 8, seed=0, device=torch.device("cpu"))
    pil = train_loader(ds, 8, 0, seed=0)
    assert len(gpu) == len(pil) == 6
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    for ((gq, gk), gi), ((pq, pk), pi) in zip(gpu, pil, strict=True):
        assert torch.equal(gi, pi)  # same sampler: same images in the same order
        for g, p in ((gq, pq), (gk, pk)):
            assert g.shape == p.shape == (8, 3, 12, 12) and g.dtype == p.dtype == torch.float32
            assert ((g >= lo - 1e-5) & (g <= hi + 1e-5)).all()
        assert not torch.equal(gq, gk)  # two independent views


def _pil_crop_scales(n: int, size: int, cfg: AugConfig) -> np.ndarray:
    img = torch.zeros(3, size, size)
    out = []
    for _ in range(n):
        _, _, h, w = transforms.RandomResizedCrop.get_params(img, (cfg.crop_min, 1.0), (3 / 4, 4 / 3))
        out.append(h * w / size**2)
    return np.array(out)


def _kornia_crop_scales(n: int, size: int, cfg: AugConfig) -> np.ndarray:
    crop = kornia_train_aug(cfg)[0]  # the RandomResizedCrop the pipeline really uses
    src = crop.forward_parameters(torch.Size([n, 3, size, size]))["src"]  # (n, 4, 2) inclusive corners
    w = src[:, 1, 0] - src[:, 0, 0] + 1
    h = src[:, 2, 1] - src[:, 1, 1] + 1
    return (w * h / size**2).numpy()


@pytest.mark.parametrize("size", [32, 96])
def test_crop_scales_match_the_pil_pipeline(size: int) -> None:
    """Area fraction of the random crop: same distribution (two-sample KS test) and quantiles."""
    from scipy.stats import ks_2samp

    torch.manual_seed(0)
    cfg = AugConfig(image_size=size)
    pil, kor = _pil_crop_scales(4000, size, cfg), _kornia_crop_scales(4000, size, cfg)
    assert pil.min() >= 0.2 - 0.05 and kor.min() >= 0.2 - 0.05 and pil.max() <= 1 and kor.max() <= 1
    assert ks_2samp(pil, kor).pvalue > 1e-3
    np.testing.assert_allclose(np.quantile(kor, [0.1, 0.5, 0.9]), np.quantile(pil, [0.1, 0.5, 0.9]), atol=0.03)


def test_grayscale_rate_and_mean_colour_match_the_pil_pipeline(tiny_data: Path) -> None:
    """Share of grey views (p = 0.2) and the mean of the views, PIL vs kornia, over 2,400 views each."""
    cfg = AugConfig(image_size=16)
    ds = IndexedImageFolder(tiny_data / "train", train_transform(cfg))
    attach_cache([ds], "yes", 64, show=False)
    torch.manual_seed(1)
    pil = torch.stack([ds[i % len(ds)][0] for i in range(2400)])
    images = ds.cache.as_tensor().float().div(255).repeat(50, 1, 1, 1)
    kor = kornia_train_aug(cfg)(images)

    def grey_share(v: torch.Tensor) -> float:
        x = v * STD + MEAN
        return float(((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 1e-3).float().mean())

    g_pil, g_kor = grey_share(pil), grey_share(kor)
    assert abs(g_pil - 0.2) < 0.04 and abs(g_kor - 0.2) < 0.04
    m_pil, m_kor = (pil * STD + MEAN).mean((0, 2, 3)), (kor * STD + MEAN).mean((0, 2, 3))
    torch.testing.assert_close(m_kor, m_pil, atol=0.03, rtol=0)


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_image() -> None:
    assert [blur_kernel_size(s) for s in (16, 32, 96, 224)] == [3, 3, 9, 23]


def test_training_run_with_gpu_aug_on_cpu(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pcl import cli
    from tests.helpers import TINY_ARGS, scalars

    def run(data: Path, exp_dir: Path, *extra: str) -> int:
        return cli.main([str(data), *TINY_ARGS, "--exp-dir", str(exp_dir), *extra])

    assert run(tiny_data, tmp_path / "ok", "--gpu-aug") == 0
    assert len(scalars(tmp_path / "ok")["train/loss_proto"]) == 48 // 8  # the PCL epoch ran on kornia views
    capsys.readouterr()
    assert run(tiny_data, tmp_path / "bad", "--gpu-aug", "--cache-images", "no") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --gpu-aug needs the decoded images in RAM")
