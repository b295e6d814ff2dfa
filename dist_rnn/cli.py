"""The command-line layer: parsers generated from the config dataclasses, and how every command
runs (parse, join the process group, report bad input in one line, exit). Library modules raise
exceptions; this layer turns them into lines and exit statuses.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import re
import signal
import sys
import textwrap
import time
import traceback
import typing
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TypeVar

import torch

from dist_rnn import __version__
from dist_rnn.config import (
    HELP_GROUPS,
    PRESETS,
    TrainConfig,
    closest,
    field_type,
    from_values,
    precision_from_accelerate,
    read_config_file,
)
from dist_rnn.distributed import DistEnv, configured
from dist_rnn.errors import OPTION, OutOfMemory, PeerLost, Stopped, UserError

C = TypeVar("C")  # a command's config dataclass (RuntimeOptions' fields, and its own)


def describe(doc: str) -> str:
    """A command's --help description: the first paragraph of its module docstring, without the
    leading "`python -m dist_rnn.x ...`: "."""
    first = doc.split("\n\n")[0]
    return first.split(": ", 1)[1] if first.startswith("`") else first


def as_flags(error: BaseException) -> str:
    """An error's message as the command line words it: each option it marks becomes the flag a
    user types (`batch_size`=99 -> --batch-size 99, `overwrite`=True -> --overwrite)."""

    def flag(m: re.Match) -> str:
        name, value = "--" + m[1].replace("_", "-"), m[2]
        if value == "False":
            return "--no-" + name[2:]
        return name if value in (None, "True") else f"{name} {value}"

    return OPTION.sub(flag, str(error.args[0]) if error.args else "")


def prog(module: str) -> str:
    """How the user started a command, for its usage line and its errors: the console script's name
    (dist-rnn-train) or `python -m dist_rnn.train` (also what torchrun's workers were given)."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return script if script.startswith("dist-rnn-") else f"python -m {module}"


def version_line(prog: str) -> str:
    """What --version prints: this command, dist_rnn's version and the torch it runs on."""
    return f"{prog} (dist_rnn {__version__}, torch {torch.__version__})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is a UserError: one line (argparse prints the whole usage first),
    printed once per node under torchrun (argparse would print it from every process); a misspelt
    flag gets the nearest real one suggested; every command answers --version."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=version_line(self.prog),
                          help="print dist_rnn's and torch's versions and exit")

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            flags = [s for action in self._actions for s in action.option_strings]
            for word in message.split(":", 1)[1].split():
                close = closest(word.split("=")[0], flags)
                if word.startswith("--") and close:
                    message += f" (did you mean {close}?)"
                    break
        raise UserError(f"{message} (see --help)")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, choices: Optional[dict[str, tuple]] = None,
                        groups: Optional[dict[str, tuple[str, ...]]] = None,
                        short: Optional[dict[str, str]] = None) -> None:
    """One flag per field of dataclass `cls` (`hidden_size` -> `--hidden-size`, and `short`'s
    one-letter form where given), typed and documented from the field, in --help's section `groups`
    names for it; a flag left out stays absent from the parsed namespace."""
    section = {}
    for title, names in (groups or {}).items():
        group = parser.add_argument_group(title)
        section.update(dict.fromkeys(names, group))
    for f in dataclasses.fields(cls):
        tp, field_choices = field_type(cls, f)
        field_choices = (choices or {}).get(f.name, field_choices)
        kwargs: dict[str, Any] = dict(help=f.metadata["help"], default=argparse.SUPPRESS)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is list:  # the flag repeated: `--checkpoint A --checkpoint B`
            kwargs.update(type=typing.get_args(tp)[0], action="append", metavar=f.name.upper())
        else:
            kwargs["type"] = tp
            kwargs["metavar"] = "{" + ",".join(field_choices) + "}" if field_choices else f.name.upper()
            if field_choices:
                kwargs["choices"] = field_choices
        # Show the dataclass default in --help without making argparse fill it in.
        if f.default is not None:
            kwargs["help"] += f" (default: {f.default})"
        names = [short[f.name]] if short and f.name in short else []
        section.get(f.name, parser).add_argument(*names, "--" + f.name.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The train CLI: one flag per TrainConfig field."""
    parser = ArgumentParser(
        prog=prog("dist_rnn.train"), usage="%(prog)s [options]",
        description=textwrap.fill(
            "Train a recurrent classifier (RNN, GRU, LSTM, bidirectional or not) on MNIST, each image read as a "
            "sequence (of rows by default; columns, pixels or permuted pixels with --sequence). Runs the same "
            "under `python -m dist_rnn.train` (one process) and `torchrun --nproc_per_node=N -m dist_rnn.train` "
            "(DDP).", 100),
        epilog="Examples:\n"
        "  python -m dist_rnn.train --preset seed-bilstm --data-dir ../shared/data/mnist\n"
        "  torchrun --standalone --nproc_per_node=4 -m dist_rnn.train --preset seed-lstm\n"
        "  python -m dist_rnn.train --cell gru --limit-train 2000 --limit-test 500 --epochs 1\n"
        "  python -m dist_rnn.train --out-dir runs/a --save-every 100   # rerun the same to resume\n"
        "Outputs (config.json, metrics.jsonl, results.json, checkpoints/) go to --out-dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_flags(parser, TrainConfig, choices={"preset": tuple(PRESETS)}, groups=HELP_GROUPS)
    return parser


def parse_config(argv: Optional[list[str]] = None) -> TrainConfig:
    """Parse flags into a TrainConfig: defaults, then the preset, then the config file, then explicit
    flags; then validate."""
    explicit = vars(build_parser().parse_args(argv))
    from_file = read_config_file(explicit["config"], TrainConfig) if explicit.get("config") else {}
    values = {**from_file, **explicit}
    if "precision" not in values and os.environ.get("ACCELERATE_MIXED_PRECISION"):
        values["precision"] = precision_from_accelerate(os.environ["ACCELERATE_MIXED_PRECISION"])
    return from_values(values)


def run_cli(prog: str, main: Callable[[], None]) -> int:
    """Run main(); a UserError becomes one line on stderr and exit status 2, a lost peer 3, a graceful
    stop 128 + the signal's number (0 for SIGUSR1); DIST_RNN_DEBUG=1 shows the traceback instead
    (docs/design-notes.md, 'How a command ends')."""
    debug = os.environ.get("DIST_RNN_DEBUG") == "1"
    try:
        main()
    except (UserError, PeerLost) as e:
        if debug:
            raise
        line = f"{prog}: error: {as_flags(e)}"
        record_for_torchrun(line)
        lost = isinstance(e, PeerLost)  # every surviving rank says it: rank 0 may be the one that is gone
        if lost or isinstance(e, OutOfMemory) or int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(line, file=sys.stderr)
        return 3 if lost else 2
    except Stopped as e:  # SIGUSR1 asks for "checkpoint and exit": done, so success (torchrun must
        return 0 if e.signum == signal.SIGUSR1 else 128 + e.signum  # not restart the workers)
    return 0


def record_for_torchrun(line: str) -> None:
    """Leave the one-line error where torchrun looks for a failed worker's cause: the file named by
    TORCHELASTIC_ERROR_FILE, in the JSON that torch's @record writes. torchrun's report then shows
    this line instead of "To enable traceback see ..."."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        Path(path).write_text(json.dumps(data))
    except OSError:  # the report is a courtesy: the line is printed anyway
        pass


def run_command(prog: str, parse: Callable[[], C], body: Callable[[C, DistEnv], object]) -> int:
    """What every dist_rnn command does: parse its config, set this rank's CPU threads (and
    determinism), join the process group (when launched by torchrun), run, leave; bad input becomes
    one line and exit status 2 (see run_cli)."""

    joined = False  # whether this process joined a process group

    def command() -> None:
        nonlocal joined
        config = parse()
        with configured(config) as env:
            joined = env.is_distributed
            body(config, env)

    try:
        code = run_cli(prog, command)
    except BaseException as e:  # a bug, or Ctrl-C twice: its traceback, then the same safe exit
        if not joined:
            raise
        traceback.print_exc()
        code = 130 if isinstance(e, KeyboardInterrupt) else 1
    if joined:
        exit_without_finalizing(code)
    return code


def exit_without_finalizing(code: int) -> NoReturn:
    """End a process that was part of a process group: run the exit handlers (wandb, logging), flush,
    and leave without finalizing the interpreter, which gloo's threads, outliving the group, could
    crash with SIGABRT (docs/design-notes.md, 'Exiting without finalizing after a process group')."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
