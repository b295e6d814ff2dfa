"""MNIST as sequences: read and verify the IDX files once, keep them in memory as uint8, batch by index.

No torchvision Dataset, no PIL, no DataLoader: the whole set is 55 MB of uint8, so each step gathers
its rows with one index and converts them to float in [0, 1] (what `ToTensor()` gives the originals).
"""

from __future__ import annotations

import argparse
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dist_rnn.config import ArgumentParser, TrainConfig
from dist_rnn.errors import UserError, run_cli

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x0000, type 0x08 (uint8), number of dimensions (3 or 1)
NUM_CLASSES = 10


@dataclass
class Split:
    """One split in memory: images (N, H, W) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: Optional[int]) -> "Split":
        """The first n samples (all when n is None), for small runs."""
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def resolve_data_dir(flag: Optional[str]) -> Path:
    """--data-dir, else $DIST_RNN_DATA, else ./data."""
    return Path(flag or os.environ.get("DIST_RNN_DATA") or "data")


def find_file(data_dir: Path, name: str) -> Optional[Path]:
    """The file `name` (plain or .gz) directly in data_dir or in torchvision's MNIST/raw/ layout."""
    for folder in (data_dir, data_dir / "MNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def have_files(data_dir: Path) -> bool:
    return all(find_file(data_dir, n) for pair in SPLIT_FILES.values() for n in pair)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path}: corrupt gzip file ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes, checking magic number, header and exact size."""
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(f"{path}: not an IDX file of this kind (magic number {found}, expected {magic})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "corrupt"
        raise UserError(f"{path}: {what} IDX file: header {shape} needs {expected} bytes, found {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_split(data_dir: Path, split: str) -> Split:
    """Load and verify one split ('train' or 'test')."""
    image_name, label_name = SPLIT_FILES[split]
    paths = []
    for name in (image_name, label_name):
        path = find_file(data_dir, name)
        if path is None:
            raise UserError(
                f"{data_dir / name}: missing (looked for {name} and {name}.gz in {data_dir} and "
                f"{data_dir / 'MNIST' / 'raw'}); pass --data-dir, set DIST_RNN_DATA, or add --download")
        paths.append(path)
    images = read_idx(paths[0], IMAGES_MAGIC)
    labels = read_idx(paths[1], LABELS_MAGIC)
    if len(images) != len(labels):
        raise UserError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UserError(f"{paths[1]}: corrupt labels (found {labels.max()}, expected 0..9)")
    return Split(torch.from_numpy(images), torch.from_numpy(labels).long())


def load_mnist(data_dir: Path) -> tuple[Split, Split]:
    """Both splits, verified to hold images of the same size."""
    train, test = load_split(data_dir, "train"), load_split(data_dir, "test")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise UserError(f"{data_dir}: train images are {tuple(train.images.shape[1:])} "
                        f"but test images are {tuple(test.images.shape[1:])}")
    return train, test


def download_mnist(data_dir: Path) -> None:
    """Fetch MNIST with torchvision into data_dir/MNIST/raw/ (call on one process only)."""
    if have_files(data_dir):
        return
    from torchvision.datasets import MNIST  # imported here: only this path needs torchvision

    try:
        for train in (True, False):
            MNIST(root=str(data_dir), train=train, download=True)
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise UserError(f"downloading MNIST into {data_dir} failed: {e}") from None


SEQUENCES = ("row", "column", "pixel", "permuted")


class SequenceView:
    """How an image becomes a sequence: `row` (28 steps of 28 pixels, the default), `column` (the
    transposed image), `pixel` (784 steps of 1 pixel) or `permuted` (784 steps of 1 pixel, in one
    fixed random order drawn from `permutation_seed`). Call it on uint8 (B, H, W) images."""

    def __init__(self, kind: str, height: int = 28, width: int = 28, permutation_seed: int = 0,
                 permutation: Optional[list[int]] = None):
        if kind not in SEQUENCES:
            raise ValueError(f"sequence must be one of {SEQUENCES}, got {kind!r}")
        self.kind, self.height, self.width = kind, height, width
        self.permutation: Optional[torch.Tensor] = None
        if kind == "permuted" and permutation is not None:
            self.permutation = torch.tensor(permutation)
        elif kind == "permuted":
            self.permutation = torch.randperm(height * width,
                                              generator=torch.Generator().manual_seed(permutation_seed))

    @classmethod
    def from_config(cls, c: TrainConfig, images: torch.Tensor, snapshot: Optional[dict] = None) -> "SequenceView":
        """The view a run trains with, for images like `images` (N, H, W); from a checkpoint, its
        saved pixel order (the one it learned)."""
        height, width = images.shape[1:]
        saved = (snapshot or {}).get("sequence_permutation")
        return cls(c.sequence, height, width, permutation_seed=c.permutation_seed, permutation=saved)

    @property
    def input_size(self) -> int:
        """Features per step: what the RNN's first layer reads."""
        return {"row": self.width, "column": self.height}.get(self.kind, 1)

    @property
    def steps(self) -> int:
        return {"row": self.height, "column": self.width}.get(self.kind, self.height * self.width)

    def to(self, device: torch.device) -> "SequenceView":
        if self.permutation is not None:
            self.permutation = self.permutation.to(device)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = as_sequences(images)
        if self.kind == "column":
            return x.transpose(1, 2).contiguous()
        if self.kind == "row":
            return x
        x = x.reshape(len(x), -1)
        if self.permutation is not None:
            x = x[:, self.permutation]
        return x.unsqueeze(-1)


def as_sequences(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> float (B, T=H, F=W) in [0, 1]: each image read row by row, as ToTensor() scales."""
    return images.float().div_(255)


class ShardedBatches:
    """The global batches of each epoch, split across ranks, with no DataLoader.

    Epoch e shuffles all N indices with a generator seeded `seed + e` (DistributedSampler's
    convention, the same on every rank), cuts them into N // global_batch global batches (the
    incomplete tail is dropped so every step has the same size), and rank r of W takes rows
    [r*b, (r+1)*b) of each, b = global_batch / W. So global batch k holds the same samples at every
    world size, and the mean of the rank losses is the global-batch loss: the same trajectory.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise UserError(f"--batch-size {global_batch} (global) does not divide over "
                            f"{world_size} processes")
        if n < global_batch:
            raise UserError(f"--batch-size {global_batch} is larger than the training set ({n} samples)")
        self.n, self.global_batch, self.rank, self.world_size, self.seed = n, global_batch, rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = n // global_batch

    def epoch(self, epoch: int) -> torch.Tensor:
        """Index tensor (steps_per_epoch, local_batch): row k is this rank's part of global batch k."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.global_batch]
        return perm.view(self.steps_per_epoch, self.world_size, self.local_batch)[:, self.rank]


def eval_shard(n: int, rank: int, world_size: int) -> slice:
    """Contiguous, non-overlapping, padding-free shard of n samples: the shards add up to exactly n."""
    return slice(n * rank // world_size, n * (rank + 1) // world_size)


def prepare(data_dir: Path, download: bool) -> str:
    """Make data_dir ready for offline training (download if asked and missing), verify it, describe it."""
    if download:
        download_mnist(data_dir)
    train, test = load_mnist(data_dir)
    height, width = train.images.shape[1:]
    return (f"{data_dir}: OK, {len(train)} training and {len(test)} test images of {height}x{width}, "
            f"labels {int(train.labels.min())}..{int(train.labels.max())}")


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m dist_rnn.data prepare --data-dir D`: fetch MNIST once (e.g. on a login node with
    internet) and verify it, so compute nodes without internet can train from D."""
    parser = ArgumentParser(prog="python -m dist_rnn.data", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("prepare", help="download (unless --no-download) and verify the MNIST files")
    cmd.add_argument("--data-dir", default=None,
                     help="target directory (default: $DIST_RNN_DATA, else ./data)")
    cmd.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                     help="download the files with torchvision when they are missing (default: yes)")

    def command() -> None:
        args = parser.parse_args(argv)
        print(prepare(resolve_data_dir(args.data_dir), args.download))

    return run_cli("dist_rnn.data", command)


if __name__ == "__main__":
    raise SystemExit(main())
