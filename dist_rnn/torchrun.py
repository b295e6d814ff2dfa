"""`python -m dist_rnn.torchrun [torchrun options] -m dist_rnn.train ...`: torchrun, with its endings
in a few lines.

The same launcher as `torchrun` (torch.distributed.run: same options, same workers, same
environment), except for how it ends: torchrun itself ends a run stopped by Ctrl-C or SIGTERM with a
20-line SignalException traceback, and a failed run with a ChildFailedError traceback above its
report. Here a stop is one line (the workers have already said at which step they stopped and
checkpointed), and a failure is torchrun's report alone, which names each failed worker's own
one-line error (dist_rnn's workers leave it in torchrun's error file).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from dist_rnn.cli import prog, version_line

PROG = "dist_rnn.torchrun"


def build_parser() -> argparse.ArgumentParser:
    """torchrun's own parser, introduced as this command: its usage, what it changes, --version."""
    parser = get_args_parser()
    parser.prog = prog(PROG)
    parser.usage = "%(prog)s [torchrun options] -m dist_rnn.train [dist_rnn.train options]"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "torchrun (torch.distributed.run: the same options, workers and environment), ending in one line:\n"
        "a Ctrl-C or SIGTERM ends with '... stopped by SIGINT' and exit 128 + the signal (torchrun: a\n"
        "30-line SignalException traceback, exit 1); a failed worker ends with torchrun's report alone,\n"
        "which names each worker's one-line error (torchrun: its ChildFailedError traceback above it).\n\n"
        "Example: %(prog)s --standalone --nproc_per_node=4 -m dist_rnn.train --preset seed-lstm\n\n"
        "torchrun's options follow.")
    parser.add_argument("--version", action="version", version=version_line(parser.prog),
                        help="print dist_rnn's and torch's versions and exit")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run torchrun with `argv`; its exit status, 128 + the signal's number after a stop."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"{PROG}: stopped by {name}; the workers' last lines say where they stopped", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        print(e.format_msg(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
