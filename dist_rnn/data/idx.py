"""The IDX image sets (MNIST, Fashion-MNIST, KMNIST: the same four file names): read and verify the
files once, in memory; download MNIST with torchvision; unpack the files where torchvision's own
loader expects them (--loader dataloader).

By default (MemoryFeeder) there is no torchvision Dataset, no PIL and no DataLoader: the whole set
is 55 MB of uint8, so each step gathers its rows with one index and converts them to float in [0, 1]
(what `ToTensor()` gives the originals)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from dist_rnn.data.splits import Split
from dist_rnn.errors import UserError, first_line

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX: 0x0000, type 0x08 (uint8), number of dimensions (3 or 1)
NUM_CLASSES = 10


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
