"""`python -m dist_rnn.bench`: dist_rnn's training loop against the original scripts' pipeline, measured
in one run on this machine, plus a world-size sweep and the costs around training.

Prints a table and writes JSON (--out) (docs/design-notes.md, 'What the benchmark measures').
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F

from dist_rnn.amp import precision_refusal
from dist_rnn.checkpoint import load_checkpoint
from dist_rnn.cli import ArgumentParser, add_dataclass_flags, describe, prog, run_cli
from dist_rnn.config import PRESETS, TrainConfig, option, validate
from dist_rnn.data import import_torchvision, load_mnist, resolve_data_dir, torchvision_root
from dist_rnn.distributed import DistEnv, single_process_device
from dist_rnn.errors import UserError, in_python_words
from dist_rnn.evaluate import evaluate
from dist_rnn.model import build_model
from dist_rnn.train import run


def preset_config(preset: str) -> TrainConfig:
    """A preset's configuration, as `--preset NAME` gives it."""
    return TrainConfig(preset=preset, **PRESETS[preset])


SEED_LSTM = preset_config("seed-lstm")  # the original LSTM script

# What (a) times besides the original: name -> (preset, precision, --cuda-graphs, global batch).
VARIANTS = {"dist_rnn": ("seed-lstm", "fp32", "off", 100), "dist_rnn_bf16": ("seed-lstm", "bf16", "off", 100)}
# On a GPU also: each precision, the step in CUDA graphs, batch 1000, and the BiLSTM preset (the
# GPU targets name both presets' graphed figures at batch 100 and 1000).
CUDA_VARIANTS = {**VARIANTS, "dist_rnn_fp16": ("seed-lstm", "fp16", "off", 100),
                 "dist_rnn_graphed": ("seed-lstm", "fp32", "on", 100),
                 "dist_rnn_graphed_bf16": ("seed-lstm", "bf16", "on", 100),
                 "dist_rnn_b1000": ("seed-lstm", "fp32", "off", 1000),
                 "dist_rnn_graphed_b1000": ("seed-lstm", "fp32", "on", 1000),
                 "bilstm": ("seed-bilstm", "fp32", "off", 100), "bilstm_bf16": ("seed-bilstm", "bf16", "off", 100),
                 "bilstm_fp16": ("seed-bilstm", "fp16", "off", 100),
                 "bilstm_graphed": ("seed-bilstm", "fp32", "on", 100),
                 "bilstm_graphed_b1000": ("seed-bilstm", "fp32", "on", 1000)}


@dataclass
class BenchConfig:
    """Options of `python -m dist_rnn.bench`."""

    data_dir: Optional[str] = option(None, "MNIST directory (default: $DIST_RNN_DATA, else ./data)")
    steps: int = option(400, "optimizer steps per measurement")
    repeats: int = option(3, "alternations of original / dist_rnn (medians are reported)")
    sweep: bool = option(True, "also run the 1-process vs 2-process world-size sweep (torchrun)")
    sweep_steps: int = option(300, "optimizer steps per torchrun run of the sweep")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where both loops train and evaluate; 'auto': CUDA "
                                                     "when available (the world-size sweep is CPU-only)")
    out: Optional[str] = option("bench.json", "write all figures as JSON here")


def original_loader(root: Path) -> torch.utils.data.DataLoader:
    """The original scripts' data path: torchvision's MNIST (PIL images) + ToTensor + DataLoader(100, shuffle)."""
    torchvision = import_torchvision()
    dataset = torchvision.datasets.MNIST(root=str(root), train=True, transform=torchvision.transforms.ToTensor(),
                                         download=False)
    return torch.utils.data.DataLoader(dataset, batch_size=100, shuffle=True)


def original_samples_per_s(root: Path, steps: int, device: torch.device, seed: int = 0) -> float:
    """The original LSTM script's loop (its hyperparameters, its data path), timed over `steps`."""
    torch.manual_seed(seed)
    loader = original_loader(root)
    model = build_model(SEED_LSTM, input_size=28).to(device)  # LSTM(28, 128, 2) + Linear on out[:, -1]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    done, start = 0, time.perf_counter()
    while done < steps:
        for i, (images, labels) in enumerate(loader):
            images, labels = images.reshape(-1, 28, 28).to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if (i + 1) % 100 == 0:
                loss.item()  # the original prints the loss every 100 steps
            if done == steps:
                break
    loss.item()  # the queued GPU work belongs to the timing
    return steps * 100 / (time.perf_counter() - start)


def original_loader_seconds_per_batch(root: Path, batches: int) -> float:
    """The original's data path alone (PIL decode + ToTensor + collate of 100 images): the most any
    in-memory pipeline can save per step."""
    loader = iter(original_loader(root))
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return (time.perf_counter() - start) / batches


def dist_rnn_run(data_dir: Path, out_dir: Path, steps: int, device: torch.device, precision: str = "fp32",
                 cuda_graphs: str = "off", batch_size: int = 100, preset: str = "seed-lstm") -> dict[str, Any]:
    """dist_rnn's own loop, in this process, with a preset's hyperparameters; adds
    `steady_samples_per_s`, the median speed of its reporting intervals after the first."""
    c = dataclasses.replace(preset_config(preset), epochs=10 ** 6, max_steps=steps, data_dir=str(data_dir),
                            out_dir=str(out_dir), limit_test=1000, resume="none", overwrite=True,
                            log_every=max(1, steps // 5),
                            precision=precision, device=device.type, cuda_graphs=cuda_graphs, batch_size=batch_size)
    validate(c)
    env = DistEnv(rank=0, local_rank=0, world_size=1, device=device)
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own log would bury the table
        results = run(c, env)
    events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    results["checkpoint_save_s"] = next(e["seconds"] for e in events if e["event"] == "checkpoint")
    rates = [e["samples_per_s"] for e in events if e["event"] == "train"]
    results["steady_samples_per_s"] = statistics.median(rates[1:] or rates)
    return results


def torchrun_samples_per_s(data_dir: Path, out_dir: Path, nproc: int, steps: int) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "dist_rnn.train", "--preset", "seed-lstm", "--data-dir", str(data_dir), "--out-dir", str(out_dir),
           "--max-steps", str(steps), "--limit-test", "1000", "--resume", "none", "--overwrite", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"torchrun x{nproc} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads((out_dir / "results.json").read_text())["train_samples_per_s"]


def seconds_to_first_step(data_dir: Path, out_dir: Path, device: torch.device) -> float:
    """Wall time from starting `python -m dist_rnn.train --max-steps 1` to its first step done, as
    stamped on the run's first `train` event in metrics.jsonl (--log-every 1)."""
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.train", "--preset", "seed-lstm", "--data-dir",
                           str(data_dir), "--out-dir", str(out_dir), "--max-steps", "1", "--log-every", "1",
                           "--limit-test", "100", "--resume", "none", "--overwrite", "--device", device.type],
                          capture_output=True, text=True)
    metrics = out_dir / "metrics.jsonl"
    events = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    first = next((e for e in events if e["event"] == "train" and e["step"] == 1), None)
    if proc.returncode != 0 or first is None:
        raise UserError(f"the first-step run failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return first["time"] - start


def bench(c: BenchConfig) -> dict[str, Any]:
    """Every measurement, in a scratch directory (runs, checkpoints, torchvision's copy of the files)
    that is removed afterwards, whatever happens."""
    data_dir = resolve_data_dir(c.data_dir)
    load_mnist(data_dir)  # fail early, in one line, on missing or broken files
    with tempfile.TemporaryDirectory(prefix="dist_rnn-bench-") as work:
        return measure(c, data_dir, Path(work))


def say(text: str) -> None:
    print(text, flush=True)


def measure(c: BenchConfig, data_dir: Path, work: Path) -> dict[str, Any]:
    """(a) speed against the original, (c) the costs around training, (b) the sweep; then the table."""
    root = torchvision_root(data_dir, work / "torchvision")
    device = single_process_device(c.device)
    figures, runs = speed(c, root, data_dir, work, device)
    figures.update(costs(c, data_dir, work, device, runs))
    if c.sweep and device.type == "cpu":  # (b) weighs CPU threads against processes
        one = [torchrun_samples_per_s(data_dir, work / f"w1-{i}", 1, c.sweep_steps) for i in range(c.repeats)]
        two = [torchrun_samples_per_s(data_dir, work / f"w2-{i}", 2, c.sweep_steps) for i in range(c.repeats)]
        figures.update(world1_samples_per_s=one, world2_samples_per_s=two,
                       ratio_2x1thread_vs_1x2threads=statistics.median(two) / statistics.median(one))
    print_table(figures)
    if c.out:
        Path(c.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def speed(c: BenchConfig, root: Path, data_dir: Path, work: Path,
          device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(a) The original pipeline and dist_rnn's variants, alternated --repeats times."""
    variants, skipped = {}, {}
    for name, spec in (CUDA_VARIANTS if device.type == "cuda" else VARIANTS).items():
        refusal = precision_refusal(spec[1], device, SEED_LSTM.cell)
        if refusal:  # e.g. bf16 on a CPU without AVX-512: left out, the rest still measured
            skipped[name] = in_python_words(refusal)
            say(f"leaving out {name}: {skipped[name]}")
        else:
            variants[name] = spec
    original: list[float] = []
    speeds: dict[str, list[float]] = {name: [] for name in variants}
    runs = []
    for i in range(c.repeats):
        original.append(original_samples_per_s(root, c.steps, device))
        for name, (preset, precision, graphs, batch) in variants.items():
            result = dist_rnn_run(data_dir, work / f"{name}-{i}", c.steps, device, precision, graphs, batch, preset)
            speeds[name].append(result["steady_samples_per_s"])
            if name == "dist_rnn":  # the fp32 runs also give the checkpoint figures of (c)
                runs.append(result)
        say(f"[{i + 1}/{c.repeats}] original {original[-1]:.0f} samples/s; "
            + ", ".join(f"{name} {values[-1]:.0f}" for name, values in speeds.items()))
    figures: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "device": device.type,
        "steps": c.steps, "repeats": c.repeats, "variants": {name: list(v) for name, v in variants.items()},
        "skipped_variants": skipped,
        "original_samples_per_s": original, "original_median": statistics.median(original),
    }
    for name, values in speeds.items():
        figures[f"{name}_samples_per_s"] = values
        figures[f"{name}_median"] = statistics.median(values)
        figures[f"ratio_{name}_vs_original"] = figures[f"{name}_median"] / figures["original_median"]
    # Neighbours in time share the machine's mood: the median of the per-alternation ratios is the
    # figure least moved by this machine's slow swings.
    figures["ratio_median_of_alternations"] = statistics.median(o / b for o, b in zip(speeds["dist_rnn"], original))
    # The share of the original's step spent in its data path bounds what an in-memory loop can win.
    loader_s = statistics.median(original_loader_seconds_per_batch(root, c.steps) for _ in range(c.repeats))
    figures["original_loader_ms_per_batch"] = loader_s * 1000
    figures["original_loader_share_of_step"] = loader_s / (100 / figures["original_median"])
    figures["ratio_bound_without_data_path"] = 1 / (1 - figures["original_loader_share_of_step"])
    return figures, runs


def costs(c: BenchConfig, data_dir: Path, work: Path, device: torch.device,
          runs: list[dict[str, Any]]) -> dict[str, Any]:
    """(c) Evaluation speed, checkpoint save/load, peak memory, time to the first step."""
    figures: dict[str, Any] = {}
    model = build_model(SEED_LSTM, input_size=28).to(device)
    _, test = load_mnist(data_dir)
    test = test.to(device)
    env = DistEnv(0, 0, 1, device)
    evaluate(model, test.head(2000), env, 1000, "fp32")  # warm: first kernels, cuDNN plans, allocations
    start = time.perf_counter()
    evaluate(model, test, env, 1000, "fp32")  # ends in .tolist(): the GPU has finished
    figures["eval_samples_per_s"] = len(test) / (time.perf_counter() - start)
    figures["checkpoint_save_s"] = statistics.median(r["checkpoint_save_s"] for r in runs)
    start = time.perf_counter()
    load_checkpoint(Path(runs[-1]["checkpoint"]))
    figures["checkpoint_load_s"] = time.perf_counter() - start
    figures["checkpoint_bytes"] = Path(runs[-1]["checkpoint"]).stat().st_size
    figures["peak_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["seconds_to_first_step"] = statistics.median(
        seconds_to_first_step(data_dir, work / f"first-{i}", device) for i in range(c.repeats))
    say(f"time to first step {figures['seconds_to_first_step']:.2f} s, eval {figures['eval_samples_per_s']:.0f} "
        f"samples/s, checkpoint {figures['checkpoint_bytes'] / 1e6:.1f} MB saved in "
        f"{figures['checkpoint_save_s'] * 1000:.0f} ms, loaded in {figures['checkpoint_load_s'] * 1000:.0f} ms")
    return figures


def print_table(figures: dict[str, Any]) -> None:
    rows = [("original pipeline (batch 100, fp32), samples/s (median)", f"{figures['original_median']:.0f}")]
    for name, (preset, precision, graphs, batch) in figures["variants"].items():
        label = f"dist_rnn {preset}, batch {batch}, {precision}" + (", CUDA graphs" if graphs == "on" else "")
        rows.append((f"{label}: samples/s (median), ratio to the original",
                     f"{figures[f'{name}_median']:.0f}  {figures[f'ratio_{name}_vs_original']:.2f}x"))
    rows += [("median of the per-alternation ratios (dist_rnn fp32)",
              f"{figures['ratio_median_of_alternations']:.2f}x"),
             ("original's data path per batch, ms (share of its step)",
              f"{figures['original_loader_ms_per_batch']:.1f} ({figures['original_loader_share_of_step']:.0%})"),
             ("best ratio a free data path allows", f"{figures['ratio_bound_without_data_path']:.2f}x")]
    if "world1_samples_per_s" in figures:
        rows += [("1 process x 2 threads, samples/s", f"{statistics.median(figures['world1_samples_per_s']):.0f}"),
                 ("2 processes x 1 thread, samples/s", f"{statistics.median(figures['world2_samples_per_s']):.0f}"),
                 ("ratio 2x1 / 1x2", f"{figures['ratio_2x1thread_vs_1x2threads']:.2f}x")]
    rows += [("time to first step, s", f"{figures['seconds_to_first_step']:.2f}"),
             ("evaluation, samples/s", f"{figures['eval_samples_per_s']:.0f}"),
             ("checkpoint save / load, ms", f"{figures['checkpoint_save_s'] * 1000:.0f} / "
                                            f"{figures['checkpoint_load_s'] * 1000:.0f}"),
             ("peak memory of this process, MB", f"{figures['peak_rss_mb_this_process']:.0f}")]
    width = max(len(r[0]) for r in rows)
    say("\n".join(f"{name.ljust(width)}  {value}" for name, value in rows))
    say(f"({figures['machine']}; {figures['repeats']} alternations of {figures['steps']} steps)")
    for name, reason in figures["skipped_variants"].items():
        say(f"not measured: {name}: {reason}")


def parse(argv: Optional[list[str]] = None) -> BenchConfig:
    parser = ArgumentParser(prog=prog("dist_rnn.bench"), description=describe(__doc__))
    add_dataclass_flags(parser, BenchConfig)
    c = BenchConfig(**vars(parser.parse_args(argv)))
    if min(c.steps, c.repeats, c.sweep_steps) < 1:
        raise UserError("`steps`, `sweep_steps` and `repeats` must be >= 1")
    return c


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(prog("dist_rnn.bench"), lambda: bench(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
