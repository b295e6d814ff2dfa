"""What --dataset names, loaded: an IDX image set (idx.py), a UCR/UEA problem or .ts file (series.py),
or Arrow/Parquet data (arrow.py). Adding a source means one module that returns (train split, test
split, what a model of it must know) and one branch here; a split is a Split in memory or anything
with its `inputs`/`subset`/`head`/`to` (ArrowSplit reads from disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch

from dist_rnn.config import TrainConfig, is_arrow_source, is_image_set
from dist_rnn.data.arrow import ArrowSplit, load_arrow
from dist_rnn.data.idx import download_mnist, load_mnist, load_split, resolve_data_dir
from dist_rnn.data.series import load_series
from dist_rnn.data.splits import Split
from dist_rnn.data.views import ImageInfo
from dist_rnn.errors import UserError


class DataInfo(Protocol):
    """What the Trainer knows of its data, whatever its kind (ImageInfo, SeriesInfo): the classes,
    whether lengths differ, the view the model reads it through, and the Dataset a DataLoader reads."""

    classes: list[Any]
    variable_length: bool

    def view(self, c: TrainConfig, train: Any, saved: Optional[dict[str, Any]]) -> Any:
        """The input view (its `state()` goes into checkpoints); a resumed run's `saved` one."""

    def loader_dataset(self, train: Any, indices: Optional[torch.Tensor]) -> tuple[Any, Optional[Callable]]:
        """(Dataset, collate_fn) of the training split for `--loader dataloader`."""


def is_path(dataset: str) -> bool:
    """Whether --dataset is a path to files (a .ts file or Arrow data), not a name."""
    return dataset.endswith(".ts") or is_arrow_source(dataset)


def default_data_dir(dataset: str) -> Path:
    """Where --dataset's files are when no data_dir is given: $DIST_RNN_DATA or ./data, which holds
    MNIST's files; the other image sets' files are named alike, so they have no default."""
    if is_image_set(dataset) and dataset != "mnist":
        raise UserError(f"`dataset` {dataset} has no default `data_dir` (the default holds MNIST's files, named "
                        "alike): give its files with `data_dir`")
    return resolve_data_dir(None)


def load_dataset(c: TrainConfig, test_only: bool = False) -> tuple[
        "Split | ArrowSplit | None", "ArrowSplit | None", "Split | ArrowSplit | None", DataInfo]:
    """(train, validation, test, info): the splits --dataset names (Arrow data stays on disk, the
    rest is read into memory; a validation split only where the data has its own, a test split None
    where it has none), and what a model of them must know (classes, lengths, the view to read them
    by). `test_only`: the training split where the test split needs none (images: None)."""
    if is_image_set(c.dataset):
        data_dir = resolve_data_dir(c.data_dir)
        if c.download and not test_only:  # a training run fetches them (one process: see main_first)
            download_mnist(data_dir)
        train, test = (None, load_split(data_dir, "test")) if test_only else load_mnist(data_dir)
        return train, None, test, ImageInfo(c.dataset, data_dir, tuple(test.images.shape[1:]))
    if is_arrow_source(c.dataset):
        return load_arrow(c.dataset, c.sequence_column, c.label_column)
    train_x, train_y, test_x, test_y, info = load_series(c.dataset, resolve_data_dir(c.data_dir))
    return Split(train_x, train_y), None, None if test_x is None else Split(test_x, test_y), info
