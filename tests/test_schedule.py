"""Learning-rate schedules on a real optimizer: the curves, plateau's cuts, and their state across a
checkpoint (the runs that resume with one: tests/test_resume.py)."""

import pytest
import torch

from dist_rnn.config import TrainConfig
from dist_rnn.schedule import Schedule


def rates(c: TrainConfig, steps: int, planned: int = 100) -> list:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=c.lr)
    schedule, seen = Schedule(c, optimizer, planned), []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


def test_curves():
    assert rates(TrainConfig(lr=0.1), 3) == [0.1, 0.1, 0.1]
    assert rates(TrainConfig(lr=0.1, lr_schedule="step", lr_step_size=2, lr_gamma=0.5), 5) == \
        pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    warm = rates(TrainConfig(lr=0.1, warmup_steps=3), 5)
    assert warm == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    cosine = rates(TrainConfig(lr=0.1, lr_schedule="cosine", warmup_steps=2), 12, planned=12)
    assert cosine[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1]) and cosine[-1] < 0.003
    assert all(a >= b for a, b in zip(cosine[2:], cosine[3:]))  # after the warm-up, only down


def test_plateau_cuts_when_the_validation_loss_stalls_and_its_state_survives_a_checkpoint():
    c = TrainConfig(lr=0.1, lr_schedule="plateau", lr_patience=1, lr_gamma=0.5, val_size=0.1)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=c.lr)
    schedule = Schedule(c, optimizer, 100)
    for loss in (1.0, 0.9, 0.95):  # one score without a better loss: patience 1 holds
        schedule.after_score(loss)
    assert optimizer.param_groups[0]["lr"] == 0.1
    saved = schedule.state_dict()
    schedule.after_score(0.97)  # the second: cut
    assert optimizer.param_groups[0]["lr"] == 0.05
    again = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=c.lr)
    restored = Schedule(c, again, 100)
    restored.load_state_dict(saved)
    restored.after_score(0.97)  # the restored one counts the same bad scores, and cuts at the same one
    assert again.param_groups[0]["lr"] == 0.05
