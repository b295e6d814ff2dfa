"""The exceptions a run ends with: bad input (UserError), a graceful stop, a lost peer. dist_rnn/cli.py
turns them into one line and an exit status."""

import signal


class UserError(Exception):
    """Bad input (flags, files, environment): reported as one line and exit status 2, no traceback.

    Every process of a node meets the same bad input and raises the same error, so one process per
    node (local rank 0) prints it.
    """


class Stopped(Exception):
    """The run stopped early on a signal, after checkpointing; rerunning the command resumes it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PeerLost(Exception):
    """A collective failed: another process died, hangs, or ran a different number of steps."""

    def __init__(self, rank: int, timeout_s: float, cause: BaseException):
        super().__init__(
            f"rank {rank}: lost the other processes in a collective (one died, hangs, or ran a different "
            f"number of steps; collectives wait at most --dist-timeout {timeout_s:g} s); the backend said: "
            f"{first_line(cause)[:300]}")


