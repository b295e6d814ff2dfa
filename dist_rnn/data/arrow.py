"""Your own sequences in Arrow: a directory written by Hugging Face `datasets`
(`DatasetDict.save_to_disk`, with `train` and `test` splits), or a Parquet file whose name holds
`train` with its `test` twin beside it. A `sequence` column (each row a list of time steps, each a
number or a list of features) and a `label` column (int or string); --sequence-column and
--label-column name others. Read with pyarrow, memory-mapped (`datasets` itself is not imported),
then padded in memory like the .ts problems (series.py): a set must fit in memory for now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dist_rnn.data.series import SeriesInfo, TsFile, padded_splits
from dist_rnn.errors import UserError, first_line


def is_arrow_source(dataset: str) -> bool:
    """Whether --dataset names a saved DatasetDict or a Parquet file."""
    return dataset.endswith(".parquet") or (Path(dataset) / "dataset_dict.json").is_file()


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401 (the submodules, loaded)
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError("`dataset` of Arrow/Parquet files needs pyarrow: pip install -e '.[arrow]'") from None
    return pyarrow


def split_sources(dataset: str) -> tuple[Path, Path]:
    """(train, test): the DatasetDict's split directories, or the Parquet file and its test twin."""
    path = Path(dataset)
    if dataset.endswith(".parquet"):
        head, found, tail = path.name.rpartition("train")
        if not found:
            raise UserError(f"`dataset` {dataset}: name the training file (its name holds 'train'), its 'test' "
                            "twin beside it")
        test = path.with_name(f"{head}test{tail}")
        for p in (path, test):
            if not p.is_file():
                raise UserError(f"`dataset` {dataset}: {p} is missing")
        return path, test
    splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
    missing = [s for s in ("train", "test") if s not in splits or not (path / s).is_dir()]
    if missing:
        raise UserError(f"`dataset` {dataset}: a DatasetDict without a {' or '.join(missing)} split "
                        f"(it has: {', '.join(splits) or 'none'})")
    return path / "train", path / "test"


def read_table(source: Path) -> Any:
    """One split as a pyarrow Table, memory-mapped: a Parquet file, or a saved split's .arrow files."""
    pa = import_pyarrow()
    try:
        if source.suffix == ".parquet":
            return pa.parquet.read_table(source, memory_map=True)
        files = [f["filename"] for f in json.loads((source / "state.json").read_text())["_data_files"]]
        return pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(source / f))).read_all() for f in files])
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        kind = "Parquet" if source.suffix == ".parquet" else "a saved dataset split"
        raise UserError(f"{source}: cannot read it as {kind} ({first_line(e)})") from None


def sequences_and_labels(table: Any, sequence_column: str, label_column: str,
                         where: Path) -> tuple[list[np.ndarray], list[Any]]:
    """Each row's (time, features) float32 array and its label; one line naming the first problem."""
    pa = import_pyarrow()
    for name in (sequence_column, label_column):
        if name not in table.column_names:
            raise UserError(f"{where}: no column {name!r} (columns: {', '.join(table.column_names)}); name yours with "
                            f"`{'sequence_column' if name == sequence_column else 'label_column'}`")
    column = table.column(sequence_column).combine_chunks()
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise UserError(f"{where}: column {sequence_column!r} is {column.type}, not a list of time steps")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise UserError(f"{where}: row {row}: no sequence (null)")
    lengths = pa.compute.list_value_length(column).to_numpy(zero_copy_only=False)
    if (lengths == 0).any():
        raise UserError(f"{where}: row {int(np.flatnonzero(lengths == 0)[0])}: a sequence of length 0")
    steps = column.flatten()
    if pa.types.is_list(steps.type) or pa.types.is_large_list(steps.type):  # each step a list of features
        widths = pa.compute.list_value_length(steps).to_numpy(zero_copy_only=False)
        if len(set(widths.tolist())) != 1:
            step = int(np.flatnonzero(widths != widths[0])[0])
            row = int(np.searchsorted(np.cumsum(lengths), step, side="right"))
            raise UserError(f"{where}: row {row}: its time steps have {widths[step]} features, others {widths[0]}")
        values = steps.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, int(widths[0]))
    else:
        values = steps.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    if not np.isfinite(values[~np.isnan(values)]).all():
        raise UserError(f"{where}: column {sequence_column!r} holds infinite values")
    sequences = np.split(values, np.cumsum(lengths)[:-1])
    labels = table.column(label_column).to_pylist()
    kinds = {type(v).__name__ for v in labels}
    if not kinds <= {"int"} and not kinds <= {"str"}:
        what = f"mixes label types ({', '.join(sorted(kinds))})" if len(kinds) > 1 else f"holds {kinds.pop()} labels"
        raise UserError(f"{where}: column {label_column!r} {what}: use ints or strings")
    return sequences, labels


def load_arrow(dataset: str, sequence_column: str, label_column: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor, torch.Tensor, SeriesInfo]:
    """Both splits, padded as series.load_series pads the .ts problems; the classes are the training
    split's labels, sorted (numbers as numbers)."""
    train_source, test_source = split_sources(dataset)
    (train_x, train_l), (test_x, test_l) = (sequences_and_labels(read_table(s), sequence_column, label_column, s)
                                            for s in (train_source, test_source))
    kinds = {split: {type(v).__name__ for v in labels} for split, labels in (("train", train_l), ("test", test_l))}
    if kinds["train"] != kinds["test"]:
        raise UserError(f"{dataset}: the splits' labels are of mixed types (train: {', '.join(kinds['train'])}; "
                        f"test: {', '.join(kinds['test'])})")
    classes = sorted(set(train_l))
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted({str(v) for v in test_l if v not in index})
    if unknown:
        raise UserError(f"{test_source}: labels the training split does not have: {', '.join(unknown[:5])}")
    names = [str(c) for c in classes]
    train, test = (TsFile(x, np.array([index[v] for v in labels], dtype=np.int64), names, dataset)
                   for x, labels in ((train_x, train_l), (test_x, test_l)))
    return padded_splits(dataset, train, test)
