"""Mixed precision: autocast for bf16/fp16, and a GradScaler that is only active for fp16."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from dist_rnn.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise UserError("`precision`=fp16 needs CUDA (on CPU use bf16 or fp32)")


def autocast(precision: str, device: torch.device, cache: bool = True) -> ContextManager:
    """The context to run forward passes in: autocast to bf16/fp16, or nothing for fp32. `cache=False`
    for a region captured in a CUDA graph (PyTorch's graph notes ask for it: cached casts would
    outlive the capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision], cache_enabled=cache)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling guards fp16 gradients against underflow; for fp32/bf16 the scaler is a pass-through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
