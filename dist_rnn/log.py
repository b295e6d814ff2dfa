"""What a run reports: console lines and a progress bar, metrics.jsonl, config.json, results.json.

Only global rank 0 reports; on every other rank each method returns at once, so callers never
need `if rank == 0`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from dist_rnn.files import atomic_write_json


class RunLog:
    """Reporting for one run, active on the main process only."""

    def __init__(self, out_dir: Path, active: bool):
        self.out_dir, self.active = Path(out_dir), active
        self._bar = None
        if active:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def info(self, message: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(message)  # keeps the bar below the text
        else:
            print(message, flush=True)

    def start_progress(self, total_steps: int, done: int = 0) -> None:
        """A tqdm bar over optimizer steps, only when stdout is a terminal (logs stay clean)."""
        if self.active and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=done, unit="step", dynamic_ncols=True, leave=False)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def event(self, kind: str, **fields: Any) -> None:
        """Append one JSON object to metrics.jsonl (flushed, so a crash loses at most this line)."""
        if not self.active:
            return
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def write_json(self, name: str, obj: Any) -> Optional[Path]:
        """Write out_dir/name atomically (config.json, results.json)."""
        if not self.active:
            return None
        path = self.out_dir / name
        atomic_write_json(path, obj)
        return path
