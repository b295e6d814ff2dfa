"""`python -m dist_rnn.slurm_files`: the SLURM files dist_rnn ships, for an installed dist_rnn without
a checkout: list them, print one (an sbatch template to copy and edit), or print its path (to run
it: the local test cluster, the job script).

An installed dist_rnn holds them as package data (dist_rnn/slurm/, with launch/gloo-ifname.sh that
job.sh sources, in dist_rnn/launch/); a checkout holds them in slurm/. $DIST_RNN_HOME, where set,
names the directory whose slurm/ every job runs instead (a checkout), here and for `dist_rnn.sweep
--slurm`. The sbatch templates find the job script the same way: $DIST_RNN_HOME, else the
directory sbatch was run from, else the installed dist_rnn of $PYTHON.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Optional

from dist_rnn.errors import UserError

PACKAGE = Path(__file__).resolve().parent

# name -> what it is (the order --list shows)
FILES = {
    "train.sbatch": "sbatch template: one node, all its GPUs",
    "multinode.sbatch": "sbatch template: N nodes (sbatch --nodes=N), all their GPUs",
    "train-cpu.sbatch": "sbatch template: one CPU node",
    "job.sh": "what the templates and `dist_rnn.sweep --slurm` run: torchrun per node, requeue on USR1",
    "local-cluster.sh": "a SLURM cluster on this machine, to try them (as root: start [--nodes N] | status | stop)",
}


def home() -> Path:
    """The directory whose slurm/job.sh the SLURM jobs run: $DIST_RNN_HOME, else the installed
    package (dist_rnn/slurm/, its package data), else the checkout this package is in."""
    env = os.environ.get("DIST_RNN_HOME")
    if env:
        if not (Path(env) / "slurm" / "job.sh").is_file():
            raise UserError(f"DIST_RNN_HOME={env} has no slurm/job.sh: point it at a dist_rnn checkout, or unset it "
                            f"to use the installed package's")
        return Path(env).absolute()
    for candidate in (PACKAGE, PACKAGE.parent):
        if (candidate / "slurm" / "job.sh").is_file():
            return candidate
    raise UserError(f"no slurm/job.sh in {PACKAGE} (dist_rnn installed without its SLURM files) nor in "
                    f"{PACKAGE.parent}: reinstall dist_rnn, or set DIST_RNN_HOME to a dist_rnn checkout")


def path_of(name: str) -> Path:
    """The file `name` (one of FILES) of home()'s slurm/; one line naming the known ones if not."""
    if name not in FILES:
        from dist_rnn.config import did_you_mean

        raise UserError(f"no SLURM file {name!r}{did_you_mean(name, FILES)} (the files: {', '.join(FILES)})")
    path = home() / "slurm" / name
    if not path.is_file():
        raise UserError(f"{path}: no such file (set DIST_RNN_HOME to a dist_rnn checkout)")
    return path


def listing() -> str:
    where = home() / "slurm"
    width = max(map(len, FILES))
    lines = [f"{name:{width}}  {what}" for name, what in FILES.items()]
    return f"in {where}:\n" + "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    from dist_rnn.cli import ArgumentParser, describe, prog, run_cli

    name = prog("dist_rnn.slurm_files")
    short = "dist-rnn-slurm" if name.startswith("dist-rnn-") else name
    parser = ArgumentParser(prog=name, description=textwrap.fill(" ".join(describe(__doc__).split()), 100),
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="Files: " + ", ".join(FILES) + "\n\nExamples:\n"
                            f"  {short} --list\n"
                            f"  {short} --print train.sbatch > train.sbatch   # edit its #SBATCH lines, then:\n"
                            "  sbatch train.sbatch --preset seed-bilstm --data-dir /data/mnist --out-dir runs/x\n"
                            f"  sudo bash \"$({short} --path local-cluster.sh)\" start --nodes 2")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the files, where they are and what each is (the "
                      "default)")
    what.add_argument("--print", metavar="NAME", dest="show", help="print the file NAME (e.g. train.sbatch)")
    what.add_argument("--path", metavar="NAME", help="print the file NAME's absolute path (to run it, e.g. "
                      "job.sh)")

    def command() -> None:
        args = parser.parse_args(argv)
        if args.show:
            sys.stdout.write(path_of(args.show).read_text())
        elif args.path:
            print(path_of(args.path))
        else:
            sys.stdout.write(listing())

    return run_cli(name, command)


if __name__ == "__main__":
    sys.exit(main())
