"""Learning-rate schedules (--lr-schedule), built on torch.optim.lr_scheduler: an optional linear
warm-up (--warmup-steps), then constant, cosine (to 0 at the last step of --epochs), step (x --lr-gamma every
--lr-step-size steps) or plateau (x --lr-gamma when the validation loss has not improved for
--lr-patience scores). Stepped after every optimizer step (plateau also after every validation
score); its state travels in the checkpoints, so a resumed run continues the same curve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch.optim import lr_scheduler

if TYPE_CHECKING:
    from dist_rnn.config import TrainConfig


def schedules_the_rate(c: "TrainConfig") -> bool:
    """Whether the run's rate changes at all (a schedule or a warm-up): what the checkpoints must
    carry, and what CUDA graphs cannot follow."""
    return c.lr_schedule != "constant" or c.warmup_steps > 0


class Schedule:
    """The rate of every step: `per_step` (warm-up and the main curve) and, for plateau, `plateau`."""

    def __init__(self, c: "TrainConfig", optimizer: torch.optim.Optimizer, planned_steps: int):
        """planned_steps: --epochs' steps. Cosine decays over them, not over --max-steps, so a run
        cut short by --max-steps (or a time limit) and continued follows the same curve."""
        self.active = schedules_the_rate(c)
        main: Optional[lr_scheduler.LRScheduler] = None
        if c.lr_schedule == "cosine":
            main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, planned_steps - c.warmup_steps))
        elif c.lr_schedule == "step":
            main = lr_scheduler.StepLR(optimizer, step_size=c.lr_step_size, gamma=c.lr_gamma)
        self.per_step: Optional[lr_scheduler.LRScheduler] = main
        if c.warmup_steps:  # from lr / (warmup + 1) up to lr over the warm-up steps
            warm = lr_scheduler.LinearLR(optimizer, start_factor=1 / (c.warmup_steps + 1), total_iters=c.warmup_steps)
            self.per_step = warm if main is None else lr_scheduler.SequentialLR(
                optimizer, [warm, main], milestones=[c.warmup_steps])
        self.plateau = (lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=c.lr_gamma, patience=c.lr_patience)
                        if c.lr_schedule == "plateau" else None)

    def step(self) -> None:
        """After an optimizer step."""
        if self.per_step is not None:
            self.per_step.step()

    def after_score(self, val_loss: float) -> None:
        """After a validation score (plateau only)."""
        if self.plateau is not None:
            self.plateau.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"per_step": self.per_step.state_dict() if self.per_step else None,
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """A checkpoint's schedule state (None, or empty parts: saved by a run without one)."""
        if not state:
            return
        if self.per_step is not None and state.get("per_step"):
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
