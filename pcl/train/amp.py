"""Mixed precision: ``--amp off|bf16|fp16`` as an autocast factory and a gradient scaler."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

AMP_MODES = ("off", "bf16", "fp16")


def autocast_factory(device: torch.device, amp: str) -> Callable[[], contextlib.AbstractContextManager]:
    """Context-manager factory for ``--amp off|bf16|fp16`` (forward passes only)."""
    if amp == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaler, enabled for fp16 only (bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
