"""What --dataset names, loaded: an IDX image set (idx.py), a UCR/UEA problem or .ts file (series.py),
or Arrow/Parquet data (arrow.py). Adding a source means one module that returns (train split, test
split, what a model of it must know) and one branch here; a split is a Split in memory or anything
with its `inputs`/`subset`/`head`/`to` (ArrowSplit reads from disk)."""

from __future__ import annotations

from typing import Optional

from dist_rnn.config import TrainConfig, is_image_set
from dist_rnn.data.arrow import ArrowSplit, is_arrow_source, load_arrow
from dist_rnn.data.idx import load_mnist, resolve_data_dir
from dist_rnn.data.series import SeriesInfo, load_series
from dist_rnn.data.splits import Split


def is_path(dataset: str) -> bool:
    """Whether --dataset is a path to files (a .ts file or Arrow data), not a name."""
    return dataset.endswith(".ts") or is_arrow_source(dataset)


def load_dataset(c: TrainConfig) -> tuple["Split | ArrowSplit", "Split | ArrowSplit", Optional[SeriesInfo]]:
    """The training and test splits --dataset names (Arrow data stays on disk, the rest is read
    into memory); for sequences also what the model must know (classes, channels, lengths); None
    for the image sets (10 classes, a view decides the rest)."""
    if is_image_set(c.dataset):
        train, test = load_mnist(resolve_data_dir(c.data_dir))
        return train, test, None
    if is_arrow_source(c.dataset):
        return load_arrow(c.dataset, c.sequence_column, c.label_column)
    train_x, train_y, test_x, test_y, info = load_series(c.dataset, resolve_data_dir(c.data_dir))
    return Split(train_x, train_y), Split(test_x, test_y), info
