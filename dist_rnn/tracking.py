"""Experiment trackers fed with the run's events: Weights & Biases (--wandb) and TensorBoard
(--tensorboard). RunLog owns them, so they exist on global rank 0 only and the train loop never
calls them directly. A tracker that fails is switched off with one warning line: training goes on.
"""

from __future__ import annotations

import netrc
import os
import secrets
from numbers import Real
from pathlib import Path
from typing import Any, Callable

from dist_rnn.config import TrainConfig, to_dict
from dist_rnn.errors import first_line


def new_run_id() -> str:
    """A fresh wandb run id (wandb 0.31 dropped wandb.util.generate_id): 8 lowercase hex characters."""
    return secrets.token_hex(4)


def numeric(fields: dict[str, Any]) -> dict[str, float]:
    """The plottable part of an event (no strings, no booleans)."""
    return {k: v for k, v in fields.items() if isinstance(v, Real) and not isinstance(v, bool)}


class WandbTracker:
    """One wandb run per training run: its id is kept in the checkpoints, so a resumed run (requeued
    SLURM job, elastic restart, rerun of the same command) continues the same wandb run."""

    name = "wandb"

    def __init__(self, c: TrainConfig, run_id: str, out_dir: Path, info: Callable[[str], None]):
        import wandb

        mode = os.environ.get("WANDB_MODE")
        if mode is None and not has_wandb_api_key():
            mode = "offline"
            info(f"wandb: no API key (WANDB_API_KEY or `wandb login`), logging offline under {out_dir / 'wandb'}; "
                 "upload later with `wandb sync`")
        tags = [t.strip() for t in c.wandb_tags.split(",") if t.strip()] if c.wandb_tags else None
        self.run = wandb.init(project=c.wandb_project, name=c.wandb_name or c.name or out_dir.name, tags=tags,
                              id=run_id, resume="allow", config=to_dict(c), dir=str(out_dir), mode=mode)
        # Plot against our optimizer step, logged as a field: a resumed run may log a step again.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, kind: str, step: int, fields: dict[str, Any]) -> None:
        self.run.log({"step": step, **{f"{kind}/{k}": v for k, v in numeric(fields).items()}})

    def summary(self, results: dict[str, Any]) -> None:
        self.run.summary.update(results)

    def close(self) -> None:
        self.run.finish()


def has_wandb_api_key() -> bool:
    """Whether wandb could authenticate: WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class TensorBoardTracker:
    """Event files under <out-dir>/tensorboard: `tensorboard --logdir <out-dir>`."""

    name = "tensorboard"

    def __init__(self, out_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError("the tensorboard package is not installed (pip install tensorboard)") from None
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, kind: str, step: int, fields: dict[str, Any]) -> None:
        for key, value in numeric(fields).items():
            self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)

    def summary(self, results: dict[str, Any]) -> None:
        for key, value in numeric(results).items():
            self.writer.add_scalar(f"results/{key}", value, global_step=results.get("steps", 0))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_trackers(c: TrainConfig, out_dir: Path, run_id: str, info: Callable[[str], None]) -> list[Any]:
    """The trackers this config asks for (RunLog calls this on rank 0 only); one that cannot start
    is skipped with a warning."""
    trackers = []
    wanted: list[tuple[str, Callable[[], Any]]] = []
    if c.wandb:
        wanted.append(("wandb", lambda: WandbTracker(c, run_id, out_dir, info)))
    if c.tensorboard:
        wanted.append(("tensorboard", lambda: TensorBoardTracker(out_dir)))
    for name, start in wanted:
        try:
            trackers.append(start())
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            info(f"warning: {name} could not start ({first_line(e)}); training goes on without it")
    return trackers
