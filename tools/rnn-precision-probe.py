"""Which precision makes cuDNN's LSTM fastest for the presets' model: a forward and backward of the
2-layer LSTM (and BiLSTM), hidden 128, batch 100 x 28 steps x 28 features, timed on the GPU in
fp32, under fp16 autocast (what --precision fp16 runs), and with the whole layer cast to fp16 and
to bf16 (what a "real" half-precision LSTM would run; autocast cannot give bf16: its cuDNN RNN
wrapper casts to fp16 whatever it is asked for). Decides what --precision bf16 should do on CUDA.

    python tools/rnn-precision-probe.py [--steps 300]

Prints samples/s and the ratio to fp32 for each form; a form cuDNN refuses prints its error.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from torch import nn


def samples_per_s(rnn: nn.Module, dtype: torch.dtype, autocast: bool, steps: int) -> float:
    x = torch.rand(100, 28, 28, device="cuda", dtype=torch.float32 if autocast else dtype)
    context = torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
    for i in range(steps + 20):
        if i == 20:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with context:
            out, _ = rnn(x)
        out.float().square().mean().backward()
    torch.cuda.synchronize()
    return steps * 100 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("rnn precision probe: no CUDA device", file=sys.stderr)
        sys.exit(2)
    for bidirectional in (False, True):
        name = "BiLSTM" if bidirectional else "LSTM"
        figures = {}
        for form, dtype, autocast in (("fp32", torch.float32, False), ("fp16 autocast", torch.float32, True),
                                      ("fp16 layer", torch.float16, False), ("bf16 layer", torch.bfloat16, False)):
            torch.manual_seed(0)
            rnn = nn.LSTM(28, 128, num_layers=2, batch_first=True, bidirectional=bidirectional).cuda().to(dtype)
            try:
                figures[form] = samples_per_s(rnn, dtype, autocast, args.steps)
            except RuntimeError as e:
                print(f"{name} {form}: FAILED: {str(e).splitlines()[0][:200]}")
        fp32 = figures.get("fp32")
        print(f"{name}, forward + backward, batch 100: " + ", ".join(
            f"{form} {value:,.0f} samples/s" + (f" ({value / fp32:.2f}x)" if fp32 else "")
            for form, value in figures.items()))


if __name__ == "__main__":
    main()
