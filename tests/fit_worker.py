"""A user's script: dist_rnn.fit on numpy arrays (unequal lengths, string labels), run as one process
or as `torchrun --nproc_per_node=2 tests/fit_worker.py OUT_DIR` (tests/test_api.py compares them)."""

import json
import sys

import numpy as np

import dist_rnn


def series(n: int, seed: int) -> tuple[list, list]:
    """Sequences (length 5-20, 2 channels) whose class is a sine's frequency in channel 0 and a shift
    of channel 1: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    sequences, labels = [], []
    for i in range(n):
        k, t = i % 3, np.arange(int(rng.integers(5, 21)))
        s = rng.normal(0, 0.3, (len(t), 2)) + 5.0
        s[:, 0] += np.sin(t * (0.4 + 0.8 * k) + rng.uniform(0, 6))
        s[:, 1] += 0.5 * k
        sequences.append(s)
        labels.append(("low", "mid", "high")[k])
    return sequences, labels


def main(out_dir: str) -> dist_rnn.FitResult:
    (train_x, train_y), (test_x, test_y) = series(200, 1), series(61, 2)
    config = dist_rnn.TrainConfig(epochs=2, batch_size=20, hidden_size=16, lr=0.01, log_every=5, out_dir=out_dir)
    return dist_rnn.fit(config, train=dist_rnn.SequenceDataset(train_x, train_y),
                        test=dist_rnn.SequenceDataset(test_x, test_y))


if __name__ == "__main__":
    result, again = main(sys.argv[1]), main(sys.argv[1] + "-again")  # a second fit in the same processes
    if result.history:  # rank 0
        print(json.dumps({"test_accuracy": result.test_accuracy, "again": again.test_accuracy,
                          "world_size": result.results["world_size"]}))
