"""The one exception type that means "the user asked for something impossible", and how CLIs report it."""

import os
import sys
from typing import Callable


class UserError(Exception):
    """Bad input (flags, files, environment): reported as one line and exit status 2, no traceback."""


def run_cli(prog: str, main: Callable[[], None]) -> int:
    """Run main(); a UserError becomes one line on stderr, from global rank 0 only, and exit status 2.

    Every rank meets the same bad input, so every rank raises; one line is enough.
    """
    try:
        main()
    except UserError as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
