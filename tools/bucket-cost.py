"""What length bucketing (--bucket-batches) saves on a long, uneven set: training samples/s with and
without it, runs alternated, medians and their ratio.

    python tools/bucket-cost.py --dataset DIR_OR_NAME [--bucket-batches 50] [--runs 3] [--steps 40] [-- extra train flags]

Each run is `python -m dist_rnn.train --max-steps N` on the same data and seed; the figure is its
results.json's training samples/s (start-up and evaluation excluded). --dataset: anything
dist_rnn.train accepts with variable lengths, e.g. the set tools/arrow-scale.py --keep writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--bucket-batches", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind, alternated")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("extra", nargs="*", help="more dist_rnn.train flags (after --)")
    args = parser.parse_args()
    rates: dict[int, list[float]] = {0: [], args.bucket_batches: []}
    with tempfile.TemporaryDirectory(prefix="dist_rnn-bucket-cost-") as tmp:
        for run in range(args.runs):
            for buckets in rates:
                out = Path(tmp) / f"{buckets}-{run}"
                cmd = [sys.executable, "-m", "dist_rnn.train", "--dataset", args.dataset, "--out-dir", str(out),
                       "--max-steps", str(args.steps), "--bucket-batches", str(buckets), "--device", "cpu",
                       "--log-every", "1000000", *args.extra]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                rate = json.loads((out / "results.json").read_text())["train_samples_per_s"]
                rates[buckets].append(rate)
                print(f"run {run + 1}, --bucket-batches {buckets}: {rate:.0f} samples/s", flush=True)
    plain, bucketed = (statistics.median(r) for r in rates.values())
    print(f"median samples/s: uniform batches {plain:.0f}, --bucket-batches {args.bucket_batches} {bucketed:.0f}: "
          f"{bucketed / plain:.2f}x")


if __name__ == "__main__":
    main()
