"""Train on an Arrow data set larger than it is wise to hold in memory, and measure each process's memory.

Writes a synthetic sequence set as `DatasetDict.save_to_disk` lays it out (dataset_dict.json,
train/ and test/ with state.json and data-0000K-of-0000N.arrow stream files, record batches of 1000
rows; written with pyarrow, so `datasets` need not be installed), of --gb gigabytes on disk, then
runs `dist_rnn.train` on it (torchrun with --nproc processes, or one plain process) while sampling
every process of the run (ranks and DataLoader workers) from /proc: its peak resident memory
(VmHWM), and the split of its resident memory at the sampled peak into private memory (RssAnon:
what the process really holds) and mapped file pages (RssFile: the page cache of the data files,
shared by every process of the node and given back under memory pressure), those of the data files
counted apart from the libraries'.

    python tools/arrow-scale.py --gb 2.2 --nproc 2 [--loader dataloader] [--keep]

The classes differ in one channel's mean, so the accuracy printed shows the batches were read right.
Before the run it also times, in its own process, what a fresh start reads: the checks over both
splits and the standardisation's two passes over the training split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROWS_PER_BATCH = 1000  # datasets' default writer batch size
FILE_BYTES = 500 << 20  # datasets' default max_shard_size


def write_split(folder: Path, rows: int, channels: int, lengths: tuple[int, int], classes: int, seed: int) -> int:
    """One split of `rows` sequences in stream files of about FILE_BYTES; returns the bytes written."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    step_type = pa.list_(pa.float32())
    schema = pa.schema([("sequence", pa.list_(step_type)), ("label", pa.int64())])
    mean_length = sum(lengths) / 2
    batches_per_file = int(FILE_BYTES / (mean_length * channels * 4)) // ROWS_PER_BATCH
    rows_per_file = max(1, batches_per_file) * ROWS_PER_BATCH
    files = [(start, min(rows, start + rows_per_file)) for start in range(0, rows, rows_per_file)]
    written = 0
    for k, (first, last) in enumerate(files):
        path = folder / f"data-{k:05d}-of-{len(files):05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for start in range(first, last, ROWS_PER_BATCH):
                n = min(ROWS_PER_BATCH, last - start)
                length = rng.integers(lengths[0], lengths[1] + 1, n)
                label = rng.integers(0, classes, n)
                values = rng.standard_normal((int(length.sum()), channels), dtype=np.float32)
                values[:, 0] += np.repeat(label.astype(np.float32) * 0.5, length)  # the class, in channel 0's mean
                steps = pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32) * channels),
                                                 pa.array(values.reshape(-1)))
                seqs = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(length)]).astype(np.int32)),
                                                steps)
                writer.write_batch(pa.record_batch([seqs, pa.array(label)], schema=schema))
        written += path.stat().st_size
    names = [f"data-{k:05d}-of-{len(files):05d}.arrow" for k in range(len(files))]
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": name} for name in names]}))
    return written


def memory(pid: int, data: Path) -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile of a process, and Data: the resident pages of its mappings of
    the files under `data`; in kB (empty if it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return {}
    found = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.splitlines())
             if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    found["Data"], inside = 0, False
    for line in smaps.splitlines():
        if not line[:1].isupper():  # a mapping's header: address range, ..., path
            inside = line.rstrip().endswith(".arrow") and str(data) in line
        elif inside and line.startswith("Rss:"):
            found["Data"] += int(line.split()[1])
    return found


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return children + [d for c in children for d in descendants(c)]


def startup_seconds(data: Path) -> tuple[float, float]:
    """What each rank of a fresh run spends reading the set before its first step: load_arrow's
    checks over both splits, then SeriesView.fit's two passes over the training split."""
    from dist_rnn.data.arrow import load_arrow
    from dist_rnn.data.series import SeriesView

    started = time.perf_counter()
    train, _, _, info = load_arrow(str(data), "sequence", "label")
    loaded = time.perf_counter()
    SeriesView.fit(info, train)
    return loaded - started, time.perf_counter() - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gb", type=float, default=2.2, help="size of the training split on disk, GB")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs=2, default=(100, 400), help="shortest and longest sequence")
    parser.add_argument("--nproc", type=int, default=2, help="processes (torchrun); 1: a plain python run")
    parser.add_argument("--loader", choices=("memory", "dataloader"), default="memory")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--dir", default=None, help="where to write the set (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written set (and reuse it next time)")
    args = parser.parse_args()

    root = Path(args.dir or tempfile.mkdtemp(prefix="dist_rnn-arrow-scale-"))
    data = root / "set"
    rows = int(args.gb * 1e9 / (sum(args.lengths) / 2 * args.channels * 4))
    if not (data / "dataset_dict.json").is_file():
        started = time.time()
        size = write_split(data / "train", rows, args.channels, args.lengths, 10, seed=1)
        size += write_split(data / "test", 5000, args.channels, args.lengths, 10, seed=2)
        (data / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
        print(f"wrote {rows} + 5000 sequences, {size / 1e9:.2f} GB, in {time.time() - started:.0f} s", flush=True)
    size = sum(f.stat().st_size for f in data.rglob("*.arrow"))
    startup = startup_seconds(data)
    train = ["-m", "dist_rnn.train", "--dataset", str(data), "--out-dir", str(root / "run"), "--overwrite", "--resume", "none",
             "--max-steps", str(args.steps), "--batch-size", "256", "--hidden-size", "32", "--num-layers", "1",
             "--lr", "0.01", "--log-every", "50", "--device", "cpu", "--loader", args.loader, "--num-workers", "1",
             "--save-every", "1000000"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
                if args.nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.nproc))}
    started = time.time()
    proc = subprocess.Popen(launcher + train, env=env)
    peaks: dict[int, dict[str, int]] = {}

    def sample() -> None:
        while proc.poll() is None:
            for pid in descendants(proc.pid) + ([proc.pid] if args.nproc == 1 else []):
                m = memory(pid, data)
                if "VmRSS" not in m:
                    continue
                if m["VmRSS"] >= peaks.get(pid, {}).get("VmRSS", -1):
                    peaks[pid] = m
                else:
                    peaks[pid]["VmHWM"] = m["VmHWM"]
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    sampler.join()
    seconds = time.time() - started
    if not args.keep and args.dir is None:
        shutil.rmtree(root)
    mb = 1024
    print(f"\ndata on disk: {size / 1e9:.2f} GB ({rows} training sequences of {args.lengths[0]}-{args.lengths[1]} "
          f"steps x {args.channels} channels, float32); {args.nproc} process(es), --loader {args.loader}; "
          f"{args.steps} steps in {seconds:.0f} s (start, checks, standardisation and final evaluation included); "
          f"exit {code}")
    print(f"a fresh start's reading, measured in this process: the checks {startup[0]:.1f} s, the standardisation "
          f"(two passes over the training split) {startup[1]:.1f} s")
    print("process   peak RSS (VmHWM)          at the sampled peak: private (RssAnon) + the data files' pages "
          "+ other files (libraries)")
    for pid, m in sorted(peaks.items(), key=lambda kv: -kv[1]["VmHWM"]):
        if m["VmHWM"] < 50 * mb:  # the launcher's helpers
            continue
        print(f"{pid:>7}   {m['VmHWM'] / mb:8.0f} MB ({m['VmHWM'] * 1024 / size:5.1%} of the data)   "
              f"{m['RssAnon'] / mb:6.0f} MB + {m['Data'] / mb:6.0f} MB + {(m['RssFile'] - m['Data']) / mb:6.0f} MB")
    sys.exit(code)


if __name__ == "__main__":
    main()
