"""Sequences handed over in Python: numpy arrays, tensors, lists of unequal lengths, or any map-style
`torch.utils.data.Dataset` of `(sequence, label)` items. They become the padded splits and the
`SeriesInfo` that the `.ts` problems become (series.py), so training, packing and standardisation
are the same code."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from dist_rnn.data.series import TsFile, as_sequence_list, padded_splits
from dist_rnn.data.splits import Split
from dist_rnn.errors import UserError

ARRAYS = "arrays"  # what `dataset` says of data handed to fit() in Python
LABEL_TYPES = (int, float, str, bool)  # what a checkpoint (weights_only) can hold as a class


def python_value(label: Any) -> Any:
    """A label as a plain Python value (numpy's int64 -> int): what a checkpoint may hold."""
    return label.item() if isinstance(label, np.generic) else label


class SequenceDataset:
    """Labelled sequences in memory. `X`: an array `(n, T, C)`, a 2-D `(n, T)` for one channel, or a
    list of `(T_i, C)` arrays (lengths may differ); `y`: n labels of any sortable type (ints,
    strings). `class_names` fixes the classes and their order; by default the labels' sorted values."""

    def __init__(self, X: Any, y: Any, class_names: Optional[Sequence[Any]] = None):
        self.sequences = as_sequence_list(X)
        if isinstance(y, (np.ndarray, torch.Tensor)):
            y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
            if y.ndim != 1:
                raise UserError(f"y: an array of shape {tuple(y.shape)}: expected one label per sequence (n,), not "
                                "one-hot rows")
            y = y.tolist()
        labels = [python_value(v) for v in y]
        bad = next((v for v in labels if not isinstance(v, LABEL_TYPES)), None)
        if bad is not None:
            raise UserError(f"y: a label of type {type(bad).__name__} ({bad!r}): use ints or strings (a checkpoint "
                            "keeps the classes as plain values)")
        if len(labels) != len(self.sequences):
            raise UserError(f"y: {len(labels)} labels for {len(self.sequences)} sequences")
        if class_names is None:
            try:
                class_names = sorted(set(labels))
            except TypeError:
                raise UserError("y: labels of mixed types cannot be ordered: use one type, or give class_names") from None
        self.classes = [python_value(c) for c in class_names]
        if not all(isinstance(c, LABEL_TYPES) for c in self.classes):
            raise UserError("class_names: use ints or strings")
        if len(set(self.classes)) != len(self.classes):
            raise UserError("class_names: a class is listed twice")
        self.labels = labels

    @classmethod
    def from_dataset(cls, dataset: Any, what: str) -> "SequenceDataset":
        """A map-style Dataset of (sequence, label) items, read once into memory."""
        if isinstance(dataset, SequenceDataset):
            return dataset
        try:
            items = [dataset[i] for i in range(len(dataset))]
        except TypeError:
            raise UserError(f"{what}: a {type(dataset).__name__}: expected a SequenceDataset or a map-style "
                            "Dataset of (sequence, label) items") from None
        if any(not isinstance(item, (tuple, list)) or len(item) != 2 for item in items):
            raise UserError(f"{what}: its items must be (sequence, label) pairs")
        labels = [item[1].item() if torch.is_tensor(item[1]) and item[1].numel() == 1 else item[1] for item in items]
        return cls([item[0] for item in items], labels)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        return self.sequences[i], self.labels[i]

    def as_ts(self, classes: list[Any], what: str) -> TsFile:
        """These sequences with their labels as indices into `classes` (one line for an unknown label)."""
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(v) for v in self.labels if v not in index})
        if unknown:
            raise UserError(f"{what}: labels the training data does not have: {', '.join(unknown[:5])}")
        return TsFile(self.sequences, np.array([index[v] for v in self.labels], dtype=np.int64), classes, ARRAYS)


def array_splits(train: Any, val: Any = None, test: Any = None,
                 ) -> tuple[Split, Optional[Split], Optional[Split], Any]:
    """(train, validation, test) padded as the .ts problems are, to the longest sequence of any of
    them, and what a model of them must know; the classes are the training data's."""
    data = {"train": SequenceDataset.from_dataset(train, "train")}
    for name, given in (("val", val), ("test", test)):
        if given is not None:
            data[name] = SequenceDataset.from_dataset(given, name)
    classes = data["train"].classes
    files = {name: d.as_ts(classes, name) for name, d in data.items()}
    # padded_splits pads two splits alike: the validation and test sequences join the second
    others = [f for name, f in files.items() if name != "train"]
    joined = TsFile([s for f in others for s in f.sequences],
                    np.concatenate([f.labels for f in others]) if others else np.zeros(0, dtype=np.int64), classes, ARRAYS)
    train_x, train_y, rest_x, rest_y, info = padded_splits(ARRAYS, files["train"], joined)
    splits, start = {}, 0
    for name in ("val", "test"):
        if name in files:
            n = len(files[name].sequences)
            splits[name] = Split(rest_x[start:start + n], rest_y[start:start + n])
            start += n
    return Split(train_x, train_y), splits.get("val"), splits.get("test"), info
