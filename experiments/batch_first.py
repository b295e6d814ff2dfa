"""Suite `batch_first`: What batch_first changes."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from experiments.lab import Lab, Report, missing


def batch_first_check(seed: int) -> dict[str, Any]:
    """The same weights with batch_first=True and False: outputs on transposed input, and step time."""
    torch.manual_seed(seed)
    first = nn.LSTM(28, 128, 2, batch_first=True)
    second = nn.LSTM(28, 128, 2, batch_first=False)
    second.load_state_dict(first.state_dict())  # batch_first is not a weight: the state dicts match
    x = torch.rand(100, 28, 28)  # (batch, time, features)
    with torch.no_grad():
        out_first = first(x)[0]
        out_second = second(x.transpose(0, 1).contiguous())[0].transpose(0, 1)  # (time, batch, features) in
    layouts = {"batch_first=True, (B, T, F) input": (first, x),
               "batch_first=False, (T, B, F) contiguous input": (second, x.transpose(0, 1).contiguous()),
               "batch_first=False, (B, T, F) input transposed as a view": (second, x.transpose(0, 1))}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(5):  # alternate the layouts: this machine's speed drifts
        for name, (lstm, data) in layouts.items():
            start = time.perf_counter()
            for _ in range(10):
                lstm(data)[0].sum().backward()
            times[name].append((time.perf_counter() - start) / 10 * 1000)
    return {"same_state_dict_keys": list(first.state_dict()) == list(second.state_dict()),
            "max_abs_output_difference": float((out_first - out_second).abs().max()),
            "ms_per_forward_backward": {name: statistics.median(t) for name, t in times.items()},
            "runs_ms": times}


def suite(lab: Lab, report: Report) -> None:
    report.add("## What does `batch_first` change?")
    checks = [m["values"] for m in (lab.measure("batch_first", "batch-first-check", s, batch_first_check)
                                    for s in lab.seeds()) if m]
    if not checks:
        return missing(report, "batch_first")
    layouts = list(checks[0]["ms_per_forward_backward"])
    report.add("Two `nn.LSTM(28, 128, num_layers=2)` with the same weights, one `batch_first=True` fed "
               "(batch, time, features) and one `batch_first=False` fed the transposed (time, batch, features) "
               "tensor; then forward + backward time of a batch of 100 (median of 5 x 10 calls, alternated):")
    report.table(["seed", "same state_dict keys", "max |output difference|", *[f"ms: {l}" for l in layouts]], [
        [s, c["same_state_dict_keys"], f"{c['max_abs_output_difference']:.1e}",
         *[f"{c['ms_per_forward_backward'][l]:.1f}" for l in layouts]] for s, c in zip(lab.seeds(), checks)])
    diffs = [c["max_abs_output_difference"] for c in checks]
    times = {l: statistics.mean(c["ms_per_forward_backward"][l] for c in checks) for l in layouts}
    ratio = times[layouts[0]] / times[layouts[1]]
    report.add(
        f"**Answer.** `batch_first` is a layout flag only: it has no weights (the state dicts have the same keys "
        f"and load into each other), and the same weights give "
        f"{'bit-for-bit identical outputs' if max(diffs) == 0 else f'outputs equal to within {max(diffs):.1e}'} on "
        f"transposed input. PyTorch's kernels (cuDNN, oneDNN) work time-major; with `batch_first=True` the "
        f"input is transposed for them, which here costs {ratio:.2f}x the time of feeding (time, batch, features) "
        f"directly ({times[layouts[0]]:.1f} vs {times[layouts[1]]:.1f} ms per forward + backward), within this "
        f"machine's noise. In practice `batch_first=True` is the common choice, because data loaders and most "
        f"other layers are batch-major; dist_rnn uses it (`dist_rnn/model.py`).")
