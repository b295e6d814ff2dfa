"""Single-loop measurements quoted in docs/benchmarks.md: Adam implementations, per-step vs once conversion.

Run: DIST_RNN_DATA=../shared/data/mnist python docs/micro_bench.py   (about 2.5 minutes on 2 cores)
Each round runs every variant once (300 steps of the LSTM preset); medians of 3 rounds are printed.
"""

import statistics
import time

import torch
import torch.nn.functional as F

from dist_rnn.data import as_sequences, load_mnist, resolve_data_dir
from dist_rnn.model import RNNClassifier

train, _ = load_mnist(resolve_data_dir(None))
train_float = as_sequences(train.images)  # the whole set converted once (188 MB)
OPTIMIZER_ARGS = {"foreach": {"foreach": True}, "fused": {"fused": True}, "forloop": {"foreach": False},
                  "float-once": {"foreach": True}}


def samples_per_s(variant: str, steps: int = 300) -> float:
    torch.manual_seed(0)
    model = RNNClassifier(28, 128, 2, 10, "lstm", False, 0.0, "last")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, **OPTIMIZER_ARGS[variant])
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(0))[: steps * 100].view(steps, 100)
    start = time.perf_counter()
    for idx in order:
        x = train_float[idx] if variant == "float-once" else as_sequences(train.images[idx])
        loss = F.cross_entropy(model(x), train.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * 100 / (time.perf_counter() - start)


if __name__ == "__main__":
    results = {variant: [] for variant in OPTIMIZER_ARGS}
    for _ in range(3):
        for variant in results:
            results[variant].append(samples_per_s(variant))
    for variant, runs in results.items():
        print(f"{variant:12s} median {statistics.median(runs):.0f} samples/s  {[round(r) for r in runs]}")
