"""The one exception type that means "the user asked for something impossible", and how CLIs report it."""

import os
import signal
import sys
from typing import Callable


class UserError(Exception):
    """Bad input (flags, files, environment): reported as one line and exit status 2, no traceback."""


class Stopped(Exception):
    """The run stopped early on a signal, after checkpointing; rerunning the command resumes it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_cli(prog: str, main: Callable[[], None]) -> int:
    """Run main(); a UserError becomes one line on stderr, from global rank 0 only, and exit status 2.

    Every rank meets the same bad input, so every rank raises; one line is enough. A graceful stop
    exits 128 + the signal's number, as the shell reports a process ended by that signal.
    """
    try:
        main()
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        return 128 + e.signum
    return 0
