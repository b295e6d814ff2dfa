"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any, Callable

from dist_rnn.errors import UserError


def ensure_writable_dir(path: Path, option: str = "out_dir") -> None:
    """Create the directory if needed and prove a file can be made there; one line naming the
    option that chose it if not."""
    if path.exists() and not path.is_dir():
        raise UserError(f"`{option}` {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"`{option}` {path}: cannot write there ({e.strerror or e})") from None


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write via `write(fh)` to a temporary file in the same directory, fsync, then rename over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one file system
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2) + "\n").encode()))
