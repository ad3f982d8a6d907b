"""Data stage, decoding: any image file PIL opens -> an 8-bit RGB image with the contrast it was stored with.

PIL's ``convert("RGB")`` gets three kinds of files wrong, and training would go on with wrong pixels:

- 16-bit (and 32-bit integer) greyscale, modes ``I;16*`` / ``I``: values are clipped at 255, so a 16-bit PNG
  becomes near-white. Here they are scaled: 16-bit values by 255 / 65535, ``I`` images whose values exceed
  the 16-bit range by their own maximum.
- Images with transparency (``RGBA``, ``LA``, ``PA``, palette images with a transparent colour): the colour
  under transparent pixels is arbitrary (often black). Here they are composited over white, as a viewer shows them.
- ``F`` (32-bit float) images: clipped the same way; here scaled from their own ``[min, max]``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pcl.utils.errors import PCLError

BACKGROUND = (255, 255, 255)  # transparent pixels show this colour
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> Image.Image:
    """``arr (H, W)`` with values in ``[0, full_scale]`` -> an 8-bit ``L`` image, rounded."""
    out = np.clip(np.rint(arr.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB: high bit depths scaled, transparency composited over ``BACKGROUND``."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT:
        return _scale_to_uint8(np.asarray(img), 65535.0).convert("RGB")
    if mode == "I":
        arr = np.asarray(img)
        top = float(arr.max()) if arr.size else 0.0
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top  # 8-bit values stored as I: unchanged
        return _scale_to_uint8(np.clip(arr, 0, None), full).convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        return _scale_to_uint8(arr - lo, max(hi - lo, 1e-12)).convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Open and decode an image as RGB (:func:`to_rgb`); any decoding problem is a ``PCLError`` naming the file."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return to_rgb(img)
    except Exception as e:  # PIL raises many types for bad files
        raise PCLError(f"corrupt or unreadable image file {path}: {e}") from None
