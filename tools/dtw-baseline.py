"""The classic baseline of the UCR/UEA archives, computed here: 1-nearest-neighbour classification with
dynamic time warping (full window, squared differences), dependent (DTW_D: one warping path for all
channels) and independent (DTW_I: each channel warped on its own, distances summed), on a problem's
standard train/test split, from the same .ts files dist_rnn trains on (as shipped, not rescaled).

    python tools/dtw-baseline.py JapaneseVowels [BasicMotions ItalyPowerDemand ...]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from dist_rnn.data.series import load_series


def dtw_to_all(a: np.ndarray, train: np.ndarray, lengths: np.ndarray, chunk: int = 64) -> np.ndarray:
    """DTW distance from sequence a (La, C) to every training sequence (N, T, C) of its own length,
    a chunk of training sequences at a time (the tables of 64 series of 1460 steps are 1 GiB). Chunks
    are taken in order of length and cut to their longest, so unequal lengths cost no padding."""
    order = np.argsort(lengths, kind="stable")
    dist = np.empty(len(train))
    for s in range(0, len(train), chunk):
        rows = order[s:s + chunk]
        dist[rows] = _dtw(a, train[rows, :lengths[rows].max()], lengths[rows])
    return dist


def _dtw(a: np.ndarray, train: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The table filled an anti-diagonal at a time: cell (i, j) needs (i-1, j), (i, j-1) and (i-1, j-1),
    all on the two diagonals before i + j, so each diagonal is one vectorised step."""
    cost = ((a[None, :, None, :] - train[:, None, :, :]) ** 2).sum(-1)  # (N, La, T)
    n, la, t = cost.shape
    d = np.full((n, la + 1, t + 1), np.inf)
    d[:, 0, 0] = 0.0
    for k in range(2, la + t + 1):
        i = np.arange(max(1, k - t), min(la, k - 1) + 1)
        j = k - i
        d[:, i, j] = cost[:, i - 1, j - 1] + np.minimum(np.minimum(d[:, i - 1, j], d[:, i, j - 1]), d[:, i - 1, j - 1])
    return d[np.arange(n), la, lengths]


def one_nn(train_x: np.ndarray, train_len: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
           test_len: np.ndarray, test_y: np.ndarray, independent: bool = False) -> float:
    correct = 0
    for a, la, y in zip(test_x, test_len, test_y):
        a = a[:la]
        if independent:
            dist = sum(dtw_to_all(a[:, [c]], train_x[..., [c]], train_len) for c in range(a.shape[1]))
        else:
            dist = dtw_to_all(a, train_x, train_len)
        correct += int(train_y[np.argmin(dist)] == y)
    return correct / len(test_y)


def load(name: str) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...], int]:
    """(train x, lengths, labels), (test x, lengths, labels) as float64 arrays, and the channels."""
    train_x, train_y, test_x, test_y, info = load_series(name, None)
    c = info.channels

    def split(x, y):
        x = x.numpy().astype(np.float64)
        lengths = x[:, 0, c].astype(int) if info.variable_length else np.full(len(x), info.max_length)
        return x[..., :c], lengths, y.numpy()

    return split(train_x, train_y), split(test_x, test_y), c


def accuracy(name: str, independent: bool = False) -> float:
    """1-NN DTW_D (or DTW_I) test accuracy on a problem's standard split."""
    train, test, _ = load(name)
    return one_nn(*train, *test, independent)


def main() -> None:
    for name in sys.argv[1:] or ["JapaneseVowels"]:
        train, test, channels = load(name)
        for independent in ([False, True] if channels > 1 else [False]):
            start = time.perf_counter()
            score = one_nn(*train, *test, independent)
            kind = "DTW_I" if independent else "DTW_D" if channels > 1 else "DTW"
            print(f"{name}: 1-NN {kind} (full window) test accuracy {score:.4f} ({len(test[0])} test, "
                  f"{len(train[0])} train cases; {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
