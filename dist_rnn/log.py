"""What a run reports: console lines and a progress bar, metrics.jsonl, config.json, results.json,
and the same train/eval events to the trackers (wandb, TensorBoard) when asked for.

Only global rank 0 reports; on every other rank each method returns at once, so callers never
need `if rank == 0`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from dist_rnn.errors import first_line
from dist_rnn.files import atomic_write, atomic_write_json

TRACKED_EVENTS = ("train", "eval", "test")  # what wandb / TensorBoard receive (the others stay in metrics.jsonl)


class RunLog:
    """Reporting for one run, active on the main process only."""

    def __init__(self, out_dir: Path, active: bool):
        self.out_dir, self.active = Path(out_dir), active
        self._bar = None  # nothing is written before start(): a refused run leaves no trace
        self._trackers: list[Any] = []
        self._last_line_at = time.monotonic()  # when the console last got a line
        self._progress_lines = 0  # training-progress lines printed so far

    def open_trackers(self, start: Callable[[], list[Any]]) -> None:
        """Start the trackers (wandb, TensorBoard) on the main process; `start` returns them."""
        if self.active:
            self._trackers = start()

    def _to_trackers(self, call: Callable[[Any], None]) -> None:
        """Call each tracker; one that fails is dropped with a warning, and the run goes on."""
        for tracker in list(self._trackers):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - a tracker must never stop training
                self._trackers.remove(tracker)
                self.info(f"warning: {tracker.name} failed ({first_line(e)}); training goes on without it")

    def start(self, keep_until_step: Optional[int]) -> None:
        """Begin metrics.jsonl: anew for a fresh run; for a resumed one, keep the events up to the
        step resumed from (those after it belong to an attempt whose work is being redone)."""
        if not self.active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        kept = []
        if keep_until_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until_step:
                        kept.append(line)
                except ValueError:  # a line cut short by a crash
                    continue
        atomic_write(path, lambda fh: fh.write("".join(line + "\n" for line in kept).encode()))
        (self.out_dir / "results.json").unlink(missing_ok=True)  # stale until this run writes it

    def info(self, message: str) -> None:
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(message)  # keeps the bar below the text
        else:
            print(message, flush=True)
        self._last_line_at = time.monotonic()

    def progress(self, message: str) -> None:
        """A line about training progress (see progress_due)."""
        self.info(message)
        self._progress_lines += 1

    def progress_due(self) -> bool:
        """Whether a plain log (a pipe: CI, SLURM) has been silent too long: the first progress line
        after 10 s, then one at least every 30 s, whatever --log-every says. A terminal has its bar."""
        if not self.active or self._bar is not None:
            return False
        return time.monotonic() - self._last_line_at >= (30 if self._progress_lines else 10)

    def start_progress(self, total_steps: int, done: int = 0) -> None:
        """A tqdm bar over optimizer steps, only when stdout is a terminal (logs stay clean)."""
        if self.active and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=done, unit="step", dynamic_ncols=True, leave=False)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def show(self, **figures: str) -> None:
        """Put the latest figures (loss, samples/s) next to the bar; tqdm adds the ETA itself."""
        if self._bar is not None:
            self._bar.set_postfix(figures)

    def summary(self, results: dict[str, Any]) -> None:
        """The run's final figures, as the trackers' summary."""
        self._to_trackers(lambda t: t.summary(results))

    def close(self) -> None:
        """Remove the bar and finish the trackers (their files are complete after this)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._to_trackers(lambda t: t.close())
        self._trackers = []

    def event(self, kind: str, **fields: Any) -> None:
        """Append one JSON object to metrics.jsonl (flushed, so a crash loses at most this line)."""
        if not self.active:
            return
        record = {"event": kind, "time": round(time.time(), 3), **fields}
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if kind in TRACKED_EVENTS:
            self._to_trackers(lambda t: t.log(kind, fields["step"], fields))

    def write_json(self, name: str, obj: Any) -> Optional[Path]:
        """Write out_dir/name atomically (config.json, results.json)."""
        if not self.active:
            return None
        path = self.out_dir / name
        atomic_write_json(path, obj)
        return path
