"""MNIST as sequences: read and verify the IDX files once, the sampler that orders them, the feeders
that batch them, and the views that turn images into sequences.

By default (MemoryFeeder) there is no torchvision Dataset, no PIL and no DataLoader: the whole set
is 55 MB of uint8, so each step gathers its rows with one index and converts them to float in [0, 1]
(what `ToTensor()` gives the originals); `--loader dataloader` feeds the same batches through
torchvision's MNIST and a DataLoader instead.
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler

from dist_rnn.config import TrainConfig, is_image_set
from dist_rnn.errors import UserError, first_line
from dist_rnn.series import SeriesInfo, load_series

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x0000, type 0x08 (uint8), number of dimensions (3 or 1)
NUM_CLASSES = 10


@dataclass
class Split:
    """One split in memory: inputs (`images`: (N, H, W) uint8 images, or (N, T, C[+1]) float32 padded
    sequences, see series.py) and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: Optional[int]) -> "Split":
        """The first n samples (all when n is None), for small runs."""
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def validation_split(train: Split, size: float, seed: int) -> tuple[Split, Split, torch.Tensor]:
    """(training split without the validation samples, validation split, the kept training indices).

    `size` is a count (>= 1) or a fraction (< 1) of the training split. Stratified: each class gives
    its share (largest remainders settle the rounding), drawn from a generator seeded by `seed`
    alone, so every rank, every world size and every resume holds out the same samples."""
    n = len(train)
    count = int(size) if size >= 1 else round(size * n)
    if not 0 < count < n:
        raise UserError(f"`val_size`={size:g} holds out {count} of the {n} training samples: it must leave "
                        "some for each of training and validation")
    classes = train.labels.unique(sorted=True)
    members = [torch.nonzero(train.labels == c).flatten() for c in classes]
    exact = [count * len(m) / n for m in members]
    quota = [int(q) for q in exact]
    by_remainder = sorted(range(len(members)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in by_remainder[:count - sum(quota)]:
        quota[i] += 1
    g = torch.Generator().manual_seed(seed)
    held = torch.cat([m[torch.randperm(len(m), generator=g)[:k]] for m, k in zip(members, quota)]).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[held] = False
    kept = torch.nonzero(keep).flatten()
    return (Split(train.images[kept], train.labels[kept]), Split(train.images[held], train.labels[held]), kept)


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
                f"{data_dir / 'MNIST' / 'raw'}); pass `data_dir`, set DIST_RNN_DATA, or add `download`=True")
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


def load_dataset(c: TrainConfig) -> tuple[Split, Split, Optional[SeriesInfo]]:
    """The training and test splits --dataset names; for sequences also what the model must know
    (classes, channels, lengths); None for the image sets (10 classes, a view decides the rest)."""
    if is_image_set(c.dataset):
        train, test = load_mnist(resolve_data_dir(c.data_dir))
        return train, test, None
    train_x, train_y, test_x, test_y, info = load_series(c.dataset, resolve_data_dir(c.data_dir))
    return Split(train_x, train_y), Split(test_x, test_y), info


def import_torchvision() -> Any:
    """torchvision (its datasets and transforms loaded), or one line saying why it cannot be used:
    not installed, or built for another torch, whose compiled operators then fail to load
    ("operator torchvision::nms does not exist"). Only --download, --loader dataloader and the bench
    need it."""
    try:
        import torchvision
        from torchvision import datasets, transforms  # noqa: F401 - loads the compiled parts
        return torchvision
    except Exception as e:  # ImportError, or a RuntimeError from the operator registry
        from importlib import metadata

        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
        match = f"0.{minor + 15}" if major == 2 else "the release made for it"  # torch 2.N <-> torchvision 0.(N+15)
        try:
            found = f"torchvision {metadata.version('torchvision')} does not work with torch {torch.__version__} " \
                    f"({first_line(e)})"
        except metadata.PackageNotFoundError:
            found = f"torchvision is not installed (torch {torch.__version__})"
        raise UserError(f"{found}: install the torchvision built for this torch (torchvision {match}, from the "
                        f"same index as torch); only --download, --loader dataloader and the bench need it") from None


def download_mnist(data_dir: Path) -> None:
    """Fetch MNIST with torchvision into data_dir/MNIST/raw/ (call on one process only)."""
    if have_files(data_dir):
        return
    torchvision = import_torchvision()  # only this path needs it
    try:
        for train in (True, False):
            torchvision.datasets.MNIST(root=str(data_dir), train=train, download=True)
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
    def from_config(cls, c: TrainConfig, images: torch.Tensor, pixel_order: Optional[list[int]] = None,
                    ) -> "SequenceView":
        """The view a run trains with, for images like `images` (N, H, W); with a checkpoint's
        saved pixel order (the one its model learned) when there is one."""
        height, width = images.shape[1:]
        return cls(c.sequence, height, width, permutation_seed=c.permutation_seed, permutation=pixel_order)

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


class GlobalBatchSampler(DistributedSampler):
    """DistributedSampler whose global batches are the same at every world size.

    Epoch e shuffles all N indices with a generator seeded `seed + e` (DistributedSampler's
    convention, the same on every rank), cuts them into N // global_batch global batches (the
    incomplete tail is dropped so every step has the same shape), and rank r of W takes rows
    [r*b, (r+1)*b) of each, b = global_batch / W. So global batch k holds the same samples at every
    world size, and the mean of the rank losses is the global-batch loss: the same trajectory. The
    stock sampler deals indices round-robin instead, so its batches change with W.

    Iterating yields this rank's sample indices from the current position (`batch_in_epoch` of
    `epoch`, see state_dict), so a DataLoader(batch_size=local_batch, sampler=...) resumes
    mid-epoch; `epoch_indices()` is the same order as one (steps, local_batch) tensor, for feeding
    batches from memory without a DataLoader.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise UserError(f"`batch_size`={global_batch} (global) does not divide over "
                            f"{world_size} processes")
        if n < global_batch:
            raise UserError(f"`batch_size`={global_batch} is larger than the training set ({n} samples)")
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.n, self.global_batch = n, global_batch
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = n // global_batch
        self.batch_in_epoch = 0

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's indices for this rank, (steps_per_epoch, local_batch): row k is its part of global batch k."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.steps_per_epoch * self.global_batch]
        return perm.view(self.steps_per_epoch, self.num_replicas, self.local_batch)[:, self.rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.batch_in_epoch:].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.batch_in_epoch) * self.local_batch

    def set_epoch(self, epoch: int) -> None:
        """A new epoch starts at its first batch."""
        super().set_epoch(epoch)
        self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]


class MemoryFeeder:
    """The default: the training images live on the device as uint8 (55 MB for MNIST), and each step
    gathers its batch there with one index, in the sampler's order."""

    def __init__(self, train: Split, device: torch.device):
        self.train, self.device = train.to(device), device

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images uint8 (b, H, W), labels (b,)) from the sampler's position to its epoch's end;
        gathered straight into the tensors `into` when given (a graphed step reads those)."""
        indices = sampler.epoch_indices().to(self.device)
        for k in range(sampler.batch_in_epoch, sampler.steps_per_epoch):
            if into is None:
                yield self.train.images[indices[k]], self.train.labels[indices[k]]
            else:
                torch.index_select(self.train.images, 0, indices[k], out=into[0])
                torch.index_select(self.train.labels, 0, indices[k], out=into[1])
                yield into


class DataLoaderFeeder:
    """--loader dataloader: torchvision's MNIST dataset, read from the same files, through a standard
    DataLoader(sampler=..., num_workers=..., pin_memory=...): the pipeline for data that does not fit
    in memory. Same sampler, so the same batches as MemoryFeeder."""

    def __init__(self, data_dir: Path, samples: "int | list[int]", device: torch.device, num_workers: int):
        torchvision = import_torchvision()
        root, self._unpacked = Path(data_dir), None
        if not all((root / "MNIST" / "raw" / name).is_file() for names in SPLIT_FILES.values() for name in names):
            # torchvision reads only uncompressed files in <root>/MNIST/raw: unpack them for this run
            self._unpacked = tempfile.TemporaryDirectory(prefix="dist_rnn-mnist-")
            root = torchvision_root(root, Path(self._unpacked.name))
        to_tensor = torchvision.transforms.PILToTensor()  # uint8 (1, H, W), as the IDX file holds it
        dataset = torchvision.datasets.MNIST(root=str(root), train=True, transform=to_tensor, download=False)
        # The training file's first n samples, or the listed ones (those a validation split left).
        self.dataset = torch.utils.data.Subset(dataset, range(samples) if isinstance(samples, int) else samples)
        self.device, self.num_workers = device, num_workers

    def batches(self, sampler: GlobalBatchSampler, into: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches from the DataLoader; copied into `into` when given (by the graphed step)."""
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=sampler.local_batch, sampler=sampler,
                                             drop_last=True, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda",
                                             # its workers' base seed from a generator of its own: drawing it
                                             # from the global one would shift every dropout mask after it
                                             generator=torch.Generator().manual_seed(0))
        for images, labels in loader:
            if into is None:
                yield images.squeeze(1).to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            else:
                into[0].copy_(images.squeeze(1), non_blocking=True)
                into[1].copy_(labels, non_blocking=True)
                yield into


def feeder(kind: str, train: Split, device: torch.device, data_dir: str, num_workers: int,
           indices: Optional[torch.Tensor] = None) -> "MemoryFeeder | DataLoaderFeeder":
    """The batch feeder --loader names; `indices`: which samples of the training file `train` holds
    (a validation split takes some out), default its first len(train)."""
    if kind == "dataloader":
        return DataLoaderFeeder(Path(data_dir), len(train) if indices is None else indices.tolist(), device,
                                num_workers)
    return MemoryFeeder(train, device)


def torchvision_root(data_dir: Path, cache: Path) -> Path:
    """The four files, uncompressed, in torchvision's <root>/MNIST/raw layout under `cache` (its own
    loader reads nothing else without trying to download); returns the root."""
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for names in SPLIT_FILES.values():
        for name in names:
            source = find_file(data_dir, name)
            if source is None:
                raise UserError(f"{data_dir / name}: missing")
            if not (raw / name).exists():
                opener = gzip.open if source.suffix == ".gz" else open
                with opener(source, "rb") as fh:
                    (raw / name).write_bytes(fh.read())
    return cache


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
    from dist_rnn.cli import ArgumentParser, prog, run_cli  # the command layer; the rest of this module is library

    parser = ArgumentParser(prog=prog("dist_rnn.data"), description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("prepare", help="download (unless --no-download) and verify the MNIST files")
    cmd.add_argument("--data-dir", default=None,
                     help="target directory (default: $DIST_RNN_DATA, else ./data)")
    cmd.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                     help="download the files with torchvision when they are missing (default: yes)")

    def command() -> None:
        args = parser.parse_args(argv)
        print(prepare(resolve_data_dir(args.data_dir), args.download))

    return run_cli(prog("dist_rnn.data"), command)


if __name__ == "__main__":
    raise SystemExit(main())
