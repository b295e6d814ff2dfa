"""One run per out-dir at a time (two would mix their metrics and checkpoints): global rank 0 holds an
flock(2) on `<out-dir>/run.lock` from before the run reads or writes anything there until it ends; the
kernel frees it however the holder ends (docs/design-notes.md, 'The run lock').
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional

from dist_rnn.errors import UserError
from dist_rnn.files import ensure_writable_dir

LOCK_NAME = "run.lock"
# A file system that has no flock (some FUSE or Lustre mounts without -o flock) answers with one of these.
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def describe_holder(text: str) -> str:
    """'pid 123 on node7 since 2026-12-02 16:40:01 (python -m dist_rnn.train ...)' from a lock's text."""
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


class RunLock:
    """The lock of one run directory; acquire() and release() on global rank 0 only."""

    def __init__(self, out_dir: Path, command: str, made: bool = False):
        """made: the run made out_dir just before (a new timestamped one), so it is removed like
        the directories acquire() makes."""
        self.out_dir, self.command, self.made = Path(out_dir), command, made
        self.path = self.out_dir / LOCK_NAME
        self._fd: Optional[int] = None
        self._made_dirs: list[Path] = []  # the directories acquire() created, deepest first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, say: Callable[[str], None]) -> None:
        """Take the lock, or stop in one line naming the run that holds it. A lock left by a run
        that has ended is taken over, saying whose it was."""
        folder = self.out_dir.absolute()
        self._made_dirs = [d for d in (folder, *folder.parents) if not d.exists()] or ([folder] if self.made else [])
        for _ in range(10):  # a retry only when a holder released (and removed) the file or folder just now
            ensure_writable_dir(self.out_dir)  # a file, or no permission: one line naming --out-dir
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a refused run removed the (empty) folder it had made meanwhile
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = describe_holder(os.read(fd, 4096).decode(errors="replace"))
                os.close(fd)
                self._remove_made_dir()
                raise UserError(f"`out_dir` {self.out_dir} is in use by another run: {holder}; wait for it to "
                                f"end, or choose another `out_dir`") from None
            except OSError as e:
                os.close(fd)
                if e.errno not in UNSUPPORTED:
                    raise
                say(f"warning: {self.path}: this file system cannot lock files ({e.strerror}), so a second run "
                    f"into {self.out_dir} would not be stopped")
                return
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # locked a file its holder had just removed: try the one there now
                os.close(fd)
                continue
            previous = os.read(fd, 4096).decode(errors="replace")
            if previous.strip():
                say(f"taking over {self.path}: the run that held it has ended ({describe_holder(previous)})")
            record = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": self.command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            self._fd = fd
            return
        raise UserError(f"`out_dir` {self.out_dir}: could not take {LOCK_NAME} (other runs keep replacing it)")

    def release(self) -> None:
        """Remove the lock file and let go (idempotent); the directories acquire() made, where still
        empty, go too: a run refused before it wrote anything leaves nothing behind."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: a waiting run then locks a new file
        os.close(self._fd)
        self._fd = None
        self._remove_made_dir()

    def _remove_made_dir(self) -> None:
        for folder in self._made_dirs:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        self._made_dirs = []


def held(out_dir: Path) -> bool:
    """Whether a process holds the run directory's lock now (a run still ending elsewhere); False on a
    file system that cannot lock files, where no run holds one (acquire() warned)."""
    try:
        fd = os.open(Path(out_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno not in UNSUPPORTED:
            raise
        return False
    finally:
        os.close(fd)
