"""The exceptions a run ends with: bad input (UserError), a graceful stop, a lost peer. dist_rnn/cli.py
turns them into one line and an exit status.

Library code knows options by their config names, never by their flags: a message marks an option
as `name` (or `name`=value). str() words it for Python callers (batch_size=99); the command line
words it as the flag a user types (--batch-size 99, see cli.as_flags).
"""

import re
import signal
from typing import Optional

# An option named in a message: `name`, or `name`=value (the value runs to a space or , ; : ) ).
OPTION = re.compile(r"`(\w+)`(?:=([^\s,;:)]+))?")


def in_python_words(message: str) -> str:
    """A message with its options as Python keywords: `batch_size`=99 -> batch_size=99."""
    return OPTION.sub(lambda m: m[1] + (f"={m[2]}" if m[2] else ""), message)


class UserError(Exception):
    """Bad input (options, files, environment): reported as one line and exit status 2, no traceback.

    Every process of a node meets the same bad input and raises the same error, so one process per
    node (local rank 0) prints it. args[0] is the message with its options marked (see above).
    """

    def __str__(self) -> str:
        return in_python_words(str(self.args[0])) if self.args else ""

    def from_rank(self, rank: int) -> "UserError":
        """The same error as another rank reports it: "rank R: ...", options still marked."""
        return UserError(f"rank {rank}: {self.args[0]}")


class OutOfMemory(UserError):
    """The host or GPU ran out of memory: one line with the size asked for and what to change. Any
    rank may meet it alone, so every rank that does prints it (not local rank 0 alone)."""


def out_of_memory(error: BaseException, device: str) -> "Optional[OutOfMemory]":
    """An allocation failure (torch's CUDA OutOfMemoryError, its CPU allocator's RuntimeError, Python's
    MemoryError) as an OutOfMemory, or None for any other error."""
    text = str(error)
    cpu = isinstance(error, RuntimeError) and ("can't allocate memory" in text or "alloc_cpu" in text)
    if not (cpu or isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"):
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f"{int(asked[1]) / 2 ** 30:.1f} GiB" if asked else None
    if size is None:
        asked = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)
        size = asked[1] if asked else "an allocation"
    return OutOfMemory(f"out of memory on {device}: {size} asked for; use a smaller `batch_size`, "
                       f"`eval_batch_size`, `hidden_size` or `num_layers` (or more processes)")


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

    __str__ = UserError.__str__

    def __init__(self, rank: int, timeout_s: float, cause: BaseException):
        super().__init__(
            f"rank {rank}: lost the other processes in a collective (one died, hangs, or ran a different "
            f"number of steps; collectives wait at most `dist_timeout`={timeout_s:g} s); the backend said: "
            f"{first_line(cause)[:300]}")


