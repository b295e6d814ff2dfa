"""Suite `batch_first`: What batch_first changes."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from experiments.lab import Lab, Report, measures


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
    checks = measures(lab, "batch_first", "batch-first-check", batch_first_check)
    if not checks:
        return report.missing("batch_first")
    layouts = list(checks[0]["ms_per_forward_backward"])
    times = {name: statistics.mean(c["ms_per_forward_backward"][name] for c in checks) for name in layouts}
    report.section(
        "batch_first", max_diff=max(c["max_abs_output_difference"] for c in checks),
        ratio=times[layouts[0]] / times[layouts[1]], ms_first=times[layouts[0]], ms_second=times[layouts[1]],
        ratios=[c["ms_per_forward_backward"][layouts[0]] / c["ms_per_forward_backward"][layouts[1]] for c in checks],
        checks_table=report.table(
            ["seed", "same state_dict keys", "max |output difference|", *[f"ms: {name}" for name in layouts]],
            [[s, c["same_state_dict_keys"], f"{c['max_abs_output_difference']:.1e}",
              *[f"{c['ms_per_forward_backward'][name]:.1f}" for name in layouts]] for s, c in zip(lab.seeds(), checks)]))
