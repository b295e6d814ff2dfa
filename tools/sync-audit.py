"""Count the host syncs of dist_rnn's training loop on a GPU, and where they come from.

Trains a preset for --steps steps with torch.cuda.set_sync_debug_mode("warn") on: every CUDA call
that makes the host wait for the device warns, and each warning is attributed to the innermost
dist_rnn function on the stack. The steady loop (the feeder, the step, the schedule, the stop
check) should make none; reports (--log-every), evaluation, checkpoints and setup may.

    python tools/sync-audit.py --data-dir MNIST [--preset seed-lstm] [--steps 300] [--cuda-graphs on]

Prints one line per place and a verdict line: `sync audit: N syncs per step in the steady loop`.
Exit status 0 when that is 0, 1 when not, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

# What the training loop runs at every step: a sync in here costs every step. The step (step.py),
# but not its construction (warm-up and capture), the feeder, the schedule and the stop check.
PER_STEP = {("feeders.py", "batches"), ("schedule.py", "step"), ("stop.py", "agreed"), ("log.py", "advance")}
SETUP = {"__init__", "_record"}


def per_step(frames: list[traceback.FrameSummary]) -> bool:
    """Whether a sync with these dist_rnn frames on its stack happened in the steady loop: in the
    step (not its construction), the feeder, the schedule or the stop check, or in the training
    loop's own body (train.py's `train` the innermost dist_rnn frame)."""
    named = [(Path(f.filename).name, f.name) for f in frames]
    if any(name == "step.py" and function in SETUP for name, function in named):
        return False
    if named and named[-1] == ("train.py", "train"):
        return True
    return any(name == "step.py" or (name, function) in PER_STEP for name, function in named)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--preset", default="seed-lstm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--cuda-graphs", choices=("on", "off"), default="off")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("sync audit: no CUDA device: nothing to audit", file=sys.stderr)
        sys.exit(2)
    from dist_rnn.config import PRESETS, TrainConfig, validate
    from dist_rnn.distributed import DistEnv
    from dist_rnn.train import run

    places: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return
        ours = [f for f in traceback.extract_stack() if "/dist_rnn/" in f.filename.replace("\\", "/")]
        frame = ours[-1] if ours else None
        places[(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" if frame else f"{filename}:{lineno}",
                per_step(ours))] += 1

    with tempfile.TemporaryDirectory(prefix="dist_rnn-sync-audit-") as out:
        c = dataclasses.replace(TrainConfig(preset=args.preset, **PRESETS[args.preset]), epochs=10 ** 6,
                                max_steps=args.steps, log_every=args.log_every, data_dir=args.data_dir, out_dir=out,
                                limit_test=1000, device="cuda", cuda_graphs=args.cuda_graphs,
                                precision=args.precision, save_every=10 ** 9, resume="none")
        validate(c)
        shown = warnings.showwarning
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = record  # catch_warnings restores the hook it found on exit
                with contextlib.redirect_stdout(io.StringIO()):
                    run(c, DistEnv(0, 0, 1, torch.device("cuda")))
        finally:
            torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = shown
    steady, total = sum(n for (place, in_loop), n in places.items() if in_loop), sum(places.values())
    print(f"{args.preset}, {args.precision}, CUDA graphs {args.cuda_graphs}, {args.steps} steps, a report every "
          f"{args.log_every}: {total} host syncs in all")
    for (place, in_loop), n in places.most_common():
        print(f"  {n:6d}  {place}{'  (in the steady loop)' if in_loop else ''}")
    # The reports must sync (they read the loss): none recorded at all means the audit saw nothing.
    print(f"sync audit: {steady} syncs in the steady loop over {args.steps} steps (target 0), {total} in all"
          + ("" if total else ": none recorded, so the audit itself failed"))
    sys.exit(0 if steady == 0 and total > 0 else 1)


if __name__ == "__main__":
    main()
