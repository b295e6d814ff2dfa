"""What packing variable-length sequences costs: one training epoch (forward, backward, Adam) over a
UCR/UEA problem's training split, packed (each sequence's own length, as dist_rnn trains) against
the same samples padded to the longest and run unpacked, alternated, median of N epochs each.

    python tools/packed-cost.py [--dataset JapaneseVowels] [--epochs 15] [--hidden-size 64] [--patch K]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dist_rnn.data.series import SeriesInfo, SeriesView, load_series
from dist_rnn.data.splits import Split
from dist_rnn.model import RNNClassifier


def epoch(model: RNNClassifier, optimizer: torch.optim.Optimizer, batches: list) -> float:
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="JapaneseVowels")
    parser.add_argument("--epochs", type=int, default=15, help="timed epochs of each kind (alternated)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=30)
    parser.add_argument("--patch", type=int, default=1, help="read K steps as one (--patch of dist_rnn.train)")
    args = parser.parse_args()
    inputs, labels, _, _, info = load_series(args.dataset, None)
    if not info.variable_length:
        raise SystemExit(f"{args.dataset}: every sequence has one length: nothing is packed")
    packed_view = SeriesView.fit(info, Split(inputs, labels), args.patch)
    padded_view = SeriesView(SeriesInfo(info.dataset, info.classes, info.channels, False, info.max_length),
                             packed_view.mean.tolist(), packed_view.std.tolist(), args.patch)
    chunks = list(zip(inputs.split(args.batch_size), labels.split(args.batch_size)))
    kinds = {"packed": [(packed_view(x), y) for x, y in chunks],
             "padded": [(padded_view(x[..., :info.channels].contiguous()), y) for x, y in chunks]}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    models = {}
    for kind in kinds:
        torch.manual_seed(0)
        model = RNNClassifier(packed_view.input_size, args.hidden_size, 2, len(info.classes), "lstm", bidirectional=True)
        models[kind] = (model, torch.optim.Adam(model.parameters(), lr=0.003))
        epoch(*models[kind], kinds[kind])  # warm-up
    for _ in range(args.epochs):
        for kind, batches in kinds.items():
            times[kind].append(epoch(*models[kind], batches))
    medians = {k: statistics.median(v) for k, v in times.items()}
    lengths = inputs[:, 0, info.channels]
    print(f"{args.dataset}: {len(labels)} training sequences, lengths {int(lengths.min())}-{int(lengths.max())} "
          f"(mean {lengths.mean():.1f}), 2-layer BiLSTM hidden {args.hidden_size}, batch {args.batch_size}, "
          f"patch {args.patch}, {torch.get_num_threads()} threads, median of {args.epochs} epochs each")
    for kind, value in medians.items():
        print(f"  {kind:6}: {1000 * value:7.1f} ms/epoch")
    print(f"  packed / padded: {medians['packed'] / medians['padded']:.2f}x")


if __name__ == "__main__":
    main()
