"""Mixed precision: autocast for bf16/fp16, a GradScaler that is only active for fp16, and the check
that this machine can run the precision asked for at all."""

from __future__ import annotations

import contextlib
import functools
import os
from typing import ContextManager, Optional

import torch

from dist_rnn.errors import UserError, first_line
from dist_rnn.model import CELLS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_bf16_failure(cell: str) -> Optional[str]:
    """Why this CPU cannot train `cell` under bf16 autocast, or None when it can: found out by training a
    tiny net of that cell once (the answer differs by cell), with the RNG left untouched
    (docs/design-notes.md, 'Probing the CPU for bf16')."""
    with torch.random.fork_rng(devices=[]):
        rnn = CELLS[cell](4, 8, num_layers=2, bidirectional=True, batch_first=True)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = rnn(torch.zeros(2, 3, 4))
            out.float().sum().backward()
        except RuntimeError as e:
            return first_line(e)
    return None


def precision_refusal(precision: str, device: torch.device, cell: str) -> Optional[str]:
    """Why `precision` cannot run a `cell` network on `device` here (a message naming the option),
    or None when it can."""
    if precision == "fp16" and device.type != "cuda":
        return "`precision`=fp16 needs CUDA (on CPU use bf16 or fp32)"
    if precision == "bf16" and device.type == "cpu":
        failure = cpu_bf16_failure(cell)
        if failure is not None:
            asked = (" (asked for by accelerate launch --mixed_precision bf16)"
                     if os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16" else "")
            return (f"`precision`=bf16{asked}: this CPU cannot run the {cell.upper()} in bfloat16 (oneDNN: "
                    f"{failure.split('. ')[0]}; its bf16 {cell.upper()} needs AVX-512 or AMX): use `precision`=fp32")
    return None


def check_precision(precision: str, device: torch.device, cell: str) -> None:
    """Refuse, in one line, a precision this machine cannot run: before anything is written."""
    refusal = precision_refusal(precision, device, cell)
    if refusal:
        raise UserError(refusal)


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
