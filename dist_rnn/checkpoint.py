"""Checkpoints: written by global rank 0 only, atomically, loadable with `weights_only=True`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_rnn.distributed import unwrap
from dist_rnn.files import atomic_write


def checkpoint_path(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step}.pt"


def save_checkpoint(out_dir: Path, model: nn.Module, config: dict[str, Any], step: int) -> Path:
    """Save {model, config, step}; the state_dict is the unwrapped module's (no `module.` prefix)."""
    path = checkpoint_path(out_dir, step)
    state = {"model": unwrap(model).state_dict(), "config": config, "step": step}
    atomic_write(path, lambda fh: torch.save(state, fh))
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load safely: weights_only=True never runs code from the file."""
    return torch.load(path, map_location="cpu", weights_only=True)
