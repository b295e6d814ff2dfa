"""Graceful stop: a signal asks the run to stop, and every rank stops at the SAME step, after a checkpoint.

Schedulers and people stop jobs with SIGTERM (kill, torchrun forwarding its own SIGTERM, SLURM at a
time limit), SIGINT (Ctrl-C) or SIGUSR1 (SLURM's --signal). The handler only records the signal;
at every step boundary the ranks all-reduce "has anyone been asked to stop?", so they agree on the
step to stop at even when only one of them was signalled, and rank 0 checkpoints exactly that step.
Further SIGTERM/SIGUSR1 are ignored while stopping (SLURM and torchrun may each deliver one); a
second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Optional

import torch
import torch.distributed as dist

from dist_rnn.distributed import DistEnv

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """Installs the handlers for the lifetime of a run; `agreed()` is the collective check."""

    def __init__(self, env: DistEnv):
        self.env = env
        self.received: Optional[int] = None
        # The check is a tiny CPU all-reduce: over gloo, even when training uses NCCL, so asking
        # never waits for the GPU. new_group() is collective: every rank creates it here.
        self._group = None
        if env.is_distributed and env.backend != "gloo":
            self._group = dist.new_group(backend="gloo")
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        if self.received is None:
            self.received = signum

    def agreed(self) -> Optional[int]:
        """Collective: the signal any rank received (the same answer on every rank), or None."""
        if not self.env.is_distributed:
            return self.received
        flag = torch.tensor([self.received or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item()) or None

    def close(self) -> None:
        """Put the previous handlers back (once; later calls do nothing)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
