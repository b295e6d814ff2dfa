"""Graceful stop: a signal asks the run to stop, and every rank stops at the SAME step, after a checkpoint.
Every CHECK_EVERY steps the ranks agree on it through an all-reduce they never wait for, as a blocking
one per step costs too much (docs/design-notes.md, 'The stop agreement').
"""

from __future__ import annotations

import datetime
import signal
import threading
from types import FrameType
from typing import Optional

import torch
import torch.distributed as dist

from dist_rnn.config import DEFAULT_DIST_TIMEOUT_S
from dist_rnn.distributed import DistEnv

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

# Steps between two agreements. A stop comes at most 2 x this many steps after the signal (well
# under a second of GPU training, seconds on CPU), far inside SLURM's --signal grace.
CHECK_EVERY = 10
# What the agreement carries besides a signal number: a search's pruner asked the run to stop (above
# every signal number, so MAX keeps it).
PRUNE = 1000


class StopRequest:
    """Installs the handlers for the lifetime of a run; `agreed()` is the collective check."""

    def __init__(self, env: DistEnv, timeout_s: float = DEFAULT_DIST_TIMEOUT_S):
        self.env = env
        self.received: Optional[int] = None
        # The check is a tiny CPU all-reduce: over gloo, even when training uses NCCL, so asking
        # never waits for the GPU. new_group() is collective: every rank creates it here.
        self._group = None
        if env.is_distributed and env.backend != "gloo":
            self._group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        self._pending: Optional[tuple[dist.Work, torch.Tensor]] = None  # the agreement under way
        # signal.signal works in the main thread only (fit may run in another: signals reach only the main one)
        in_main = threading.current_thread() is threading.main_thread()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS} if in_main else {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        if self.received is None:
            self.received = signum

    def agreed(self, step: int) -> Optional[int]:
        """The signal any rank received, the same answer on every rank, or None. Collective at
        every CHECK_EVERY-th step (every rank calls it with the same steps): it answers with the
        agreement started CHECK_EVERY steps before and starts the next; None in between."""
        if not self.env.is_distributed:
            return self.received
        if step % CHECK_EVERY:
            return None
        answer = self._finish_pending()
        flag = torch.tensor([self.received or 0], dtype=torch.int64)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return answer

    def agree_now(self, prune: bool = False) -> Optional[int]:
        """A blocking agreement, for a point every rank reaches together (after a validation score):
        PRUNE when `prune` was asked on any rank (global rank 0 asks the pruner), else the signal any
        rank received, or None. Collective; the agreement under way, if any, is finished first."""
        flag = torch.tensor([PRUNE if prune else self.received or 0], dtype=torch.int64)
        if self.env.is_distributed:
            self._finish_pending()  # (what it carried is in `received`, which this all-reduce sends too)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item()) or None

    def _finish_pending(self) -> Optional[int]:
        if self._pending is None:
            return None
        work, flag = self._pending
        work.wait()
        self._pending = None
        return int(flag.item()) or None

    def close(self, settle: bool = True) -> None:
        """Put the previous handlers back (once; later calls do nothing). With `settle`, first let the
        agreement under way finish (every rank started it); not on the way out of an error, where a
        peer may be gone."""
        if settle:
            self._finish_pending()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
