"""`python -m dist_rnn.data prepare --data-dir D`: the command (the rest of the package is library, and
imports nothing of the command layer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from dist_rnn.cli import ArgumentParser, prog, run_cli
from dist_rnn.data.idx import download_mnist, load_mnist, resolve_data_dir


def prepare(data_dir: Path, download: bool) -> str:
    """Make data_dir ready for offline training (download if asked and missing), verify it, describe it."""
    if download:
        download_mnist(data_dir)
    train, test = load_mnist(data_dir)
    height, width = train.images.shape[1:]
    return (f"{data_dir}: OK, {len(train)} training and {len(test)} test images of {height}x{width}, "
            f"labels {int(train.labels.min())}..{int(train.labels.max())}")


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m dist_rnn.data prepare --data-dir D`: fetch MNIST once (e.g. on a login node with
    internet) and verify it, so compute nodes without internet can train from D."""
    parser = ArgumentParser(prog=prog("dist_rnn.data"), description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("prepare", help="download (unless --no-download) and verify the MNIST files")
    cmd.add_argument("--data-dir", default=None,
                     help="target directory (default: $DIST_RNN_DATA, else ./data)")
    cmd.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                     help="download the files with torchvision when they are missing (default: yes)")

    def command() -> None:
        args = parser.parse_args(argv)
        print(prepare(resolve_data_dir(args.data_dir), args.download))

    return run_cli(prog("dist_rnn.data"), command)


if __name__ == "__main__":
    raise SystemExit(main())
