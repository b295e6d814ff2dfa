"""The one exception type that means "the user asked for something impossible", and how CLIs report it."""

import os
import signal
import sys
from typing import Callable


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


def run_cli(prog: str, main: Callable[[], None]) -> int:
    """Run main(); a UserError becomes one line on stderr and exit status 2.

    A UserError is printed by local rank 0 only: every process of its node raises the same one
    (errors one rank meets are shared first, see distributed.main_first). A graceful stop exits
    128 + the signal's number, as the shell reports a process ended by that signal, except on
    SIGUSR1 ("checkpoint and exit", what the SLURM scripts send), which exits 0; a lost peer exits
    3. DIST_RNN_DEBUG=1 shows the traceback of any of them instead.
    """
    debug = os.environ.get("DIST_RNN_DEBUG") == "1"
    try:
        main()
    except UserError as e:
        if debug:
            raise
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGUSR1 asks for "checkpoint and exit": done, so success (torchrun must
        return 0 if e.signum == signal.SIGUSR1 else 128 + e.signum  # not restart the workers)
    except PeerLost as e:  # every surviving rank says it: rank 0 may be the one that is gone
        if debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 3
    return 0
