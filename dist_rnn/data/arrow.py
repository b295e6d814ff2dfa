"""Your own sequences in Arrow: a directory written by Hugging Face `datasets`
(`DatasetDict.save_to_disk`, with `train` and `test` splits), or a Parquet file whose name holds
`train` with its `test` twin beside it. A `sequence` column (each row a list of time steps, each a
number or a list of features) and a `label` column (int or string); --sequence-column and
--label-column name others. Read with pyarrow (`datasets` itself is not imported) and never copied
whole: a saved split's .arrow files are parsed from memory maps, and each batch's rows are read from
the files when a step asks for them (ArrowSplit), padded as series.padded pads the .ts problems, so
a set larger than memory trains with each process holding only its labels and the batch in hand.
Parquet is compressed on disk, so it is decoded into memory (unpadded, as compact as the data): save
sets larger than memory with `DatasetDict.save_to_disk`.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from dist_rnn.data.series import SeriesInfo
from dist_rnn.errors import UserError, first_line

BLOCK = 1 << 22  # values per block of the check over a whole split: bounded temporaries


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.compute  # noqa: F401 (the submodules, loaded)
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UserError("`dataset` of Arrow/Parquet files needs pyarrow: pip install -e '.[arrow]'") from None
    return pyarrow


OPTIONAL_SPLITS = ("validation", "test")


def split_sources(dataset: str) -> dict[str, Path]:
    """The splits the data has: "train", and "validation" and "test" where there are (a DatasetDict's
    split directories, or the Parquet file and its twins named with 'validation' or 'test')."""
    path = Path(dataset)
    if dataset.endswith(".parquet"):
        head, found, tail = path.name.rpartition("train")
        if not found:
            raise UserError(f"`dataset` {dataset}: name the training file (its name holds 'train'), its 'test' "
                            "twin beside it")
        if not path.is_file():
            raise UserError(f"`dataset` {dataset}: {path} is missing")
        twins = {name: path.with_name(f"{head}{name}{tail}") for name in OPTIONAL_SPLITS}
        return {"train": path, **{name: twin for name, twin in twins.items() if twin.is_file()}}
    splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
    if "train" not in splits or not (path / "train").is_dir():
        raise UserError(f"`dataset` {dataset}: a DatasetDict without a train split (it has: {', '.join(splits) or 'none'})")
    return {name: path / name for name in ("train", *OPTIONAL_SPLITS) if name in splits and (path / name).is_dir()}


def read_table(source: Path) -> tuple[Any, list[tuple[Any, int, int]]]:
    """One split as a pyarrow Table: a Parquet file, decoded; or a saved split's .arrow files, parsed
    from memory maps without copying, the pages that parsing read let go again: their values are
    never read through the maps (see Chunk). Also (the open file, its map's first address, its
    size) of each .arrow file."""
    pa = import_pyarrow()
    try:
        if source.suffix == ".parquet":
            return pa.parquet.read_table(source, memory_map=True), []
        files = [f["filename"] for f in json.loads((source / "state.json").read_text())["_data_files"]]
        allow_open_files(2 * len(files) + 64)  # while parsing, a file and its map's duplicate each
        tables, maps = [], []
        for name in files:
            file = open(source / name, "rb")
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            buffer = pa.py_buffer(mapped)  # a stream read from a buffer is zero-copy: the table points into the map
            tables.append(pa.ipc.open_stream(buffer).read_all())
            mapped.madvise(mmap.MADV_DONTNEED)  # the message headers parsing touched (in the page cache still)
            maps.append((file, buffer.address, buffer.size))
        return pa.concat_tables(tables), maps
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        kind = "Parquet" if source.suffix == ".parquet" else "a saved dataset split"
        raise UserError(f"{source}: cannot read it as {kind} ({first_line(e)})") from None


def allow_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files to `needed` where the hard limit allows it
    (a large saved set has hundreds of shards, each kept open); one line where it does not."""
    try:
        import resource
    except ImportError:  # (not on Windows)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(f"this data set needs about {needed} open files and `ulimit -n` allows {hard}: raise it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@dataclass
class Chunk:
    """One record batch of the sequence column. Its values (every feature of every step, flat) are
    row r's from starts[r] to starts[r + 1]; `read` returns them: from memory (Parquet), or read
    from the file with pread (saved data), so that a process never maps the data set's pages in:
    reading a row through the memory map would keep pages around it resident (the kernel maps the
    page cache's large folios whole), and random batches would fill the process with the data set."""

    starts: np.ndarray
    dtype: np.dtype
    values: Optional[np.ndarray] = None  # in memory
    file: Any = None  # else: the open file, and where values[0] lies in it
    offset: int = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.values is not None:
            return self.values[start:stop]
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self.file.fileno(), (stop - start) * size, self.offset + start * size),
                             self.dtype)


def chunk_of(leaf: Any, starts: np.ndarray, maps: list[tuple[Any, int, int]]) -> Chunk:
    """A Chunk of a primitive array: its file and offset when the array lies in one of the mapped
    files (found by its address), else its values in memory."""
    if leaf.null_count == 0 and maps:
        address = leaf.buffers()[1].address + leaf.offset * leaf.type.bit_width // 8
        for file, base, size in maps:
            if base <= address < base + size:
                return Chunk(starts, np.dtype(leaf.type.to_pandas_dtype()), file=file, offset=address - base)
    values = leaf.to_numpy(zero_copy_only=False)  # (nulls become NaN: a copy)
    return Chunk(starts, values.dtype, values=values)


class ArrowSplit:
    """One split of Arrow data, read where it lies. In memory: the class index (8 bytes) and length
    (4 bytes) of each row, and which of the table's rows this split holds (a validation split takes
    some); `inputs(index)` reads those rows and pads them as series.padded does: float32 (b, T, C),
    plus the length in channel C at step 0 when lengths differ, T the batch's longest."""

    def __init__(self, chunks: list[Chunk], labels: torch.Tensor, lengths: np.ndarray, channels: int,
                 variable_length: bool, rows: Optional[np.ndarray] = None):
        self.chunks, self.labels, self.lengths, self.channels = chunks, labels, lengths, channels
        self.variable_length = variable_length
        self.first_row = np.cumsum([0] + [len(c.starts) - 1 for c in chunks])
        self.rows = np.arange(len(labels)) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def _rows(self, index: "torch.Tensor | slice") -> np.ndarray:
        """The table rows `index` (into this split) picks."""
        return self.rows[index.cpu().numpy() if torch.is_tensor(index) else index]

    @property
    def width(self) -> int:
        """Features per padded step: the channels, and the length channel when lengths differ."""
        return self.channels + (1 if self.variable_length else 0)

    def inputs(self, index: "torch.Tensor | slice") -> torch.Tensor:
        rows = self._rows(index)
        lengths = self.lengths[rows]
        out = np.zeros((len(rows), int(lengths.max(initial=1)), self.width), dtype=np.float32)
        in_chunk = np.searchsorted(self.first_row, rows, side="right") - 1
        for i, (row, c) in enumerate(zip(rows.tolist(), in_chunk.tolist())):
            chunk, r = self.chunks[c], row - self.first_row[c]
            out[i, :lengths[i], :self.channels] = chunk.read(chunk.starts[r], chunk.starts[r + 1]).reshape(
                -1, self.channels)
        if self.variable_length:
            out[:, 0, self.channels] = lengths
        return torch.from_numpy(out)

    def subset(self, index: "torch.Tensor | slice") -> "ArrowSplit":
        return ArrowSplit(self.chunks, self.labels[index], self.lengths, self.channels, self.variable_length,
                          self._rows(index))

    def sequence_lengths(self) -> torch.Tensor:
        return torch.from_numpy(self.lengths[self.rows]).long()

    def head(self, n: Optional[int]) -> "ArrowSplit":
        return self if n is None else self.subset(slice(0, n))

    def to(self, device: torch.device) -> "ArrowSplit":
        """Stays where it is: each batch goes to the device when it is read."""
        return self

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (int(self.lengths[self.rows].max(initial=1)), self.width)

    dtype = torch.float32
    device = torch.device("cpu")


def _offsets(array: Any) -> np.ndarray:
    """A list array's offsets (rows + 1, int64), from 0 however the array was sliced."""
    pa = import_pyarrow()
    if pa.types.is_fixed_size_list(array.type):
        return np.arange(len(array) + 1, dtype=np.int64) * array.type.list_size
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _is_list(kind: Any) -> bool:
    pa = import_pyarrow()
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def read_chunks(table: Any, column_name: str, where: Path,
                maps: list[tuple[Any, int, int]]) -> tuple[list[Chunk], np.ndarray, int]:
    """The sequence column's chunks, each row's length and the channel count, checked one record
    batch at a time (no copy of the whole column); one line naming the first bad row."""
    pa = import_pyarrow()
    column = table.column(column_name)
    if not _is_list(column.type):
        raise UserError(f"{where}: column {column_name!r} is {column.type}, not a list of time steps")
    chunks, lengths, width, row0 = [], [], None, 0
    for array in column.chunks:
        if len(array) == 0:
            continue
        if array.null_count:
            row = row0 + int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
            raise UserError(f"{where}: row {row}: no sequence (null)")
        offsets = _offsets(array)
        steps = np.diff(offsets)
        if (steps == 0).any():
            raise UserError(f"{where}: row {row0 + int(np.flatnonzero(steps == 0)[0])}: a sequence of length 0")
        flat = array.flatten()
        if flat.null_count:  # (flatten() drops a null step's values but not its place in the offsets)
            step = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
            row = row0 + int(np.searchsorted(offsets, step, side="right")) - 1
            raise UserError(f"{where}: row {row}: a time step is null (no features); write NaN for a missing value")
        if _is_list(flat.type):  # each step a list of features
            inner = _offsets(flat)
            widths = np.diff(inner)
            width = int(widths[0]) if width is None else width
            if (widths != width).any():
                step = int(np.flatnonzero(widths != width)[0])
                row = row0 + int(np.searchsorted(offsets, step, side="right")) - 1
                raise UserError(f"{where}: row {row}: its time steps have {widths[step]} features, others {width}")
            starts, leaf = inner[offsets], flat.flatten()
        else:
            width, starts, leaf = 1, offsets, flat
        if not (pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type)):
            raise UserError(f"{where}: column {column_name!r} holds {leaf.type} values, not numbers")
        chunk = chunk_of(leaf, starts, maps)
        for start in range(0, len(leaf), BLOCK):
            if np.isinf(chunk.read(start, min(start + BLOCK, len(leaf)))).any():
                raise UserError(f"{where}: column {column_name!r} holds infinite values")
        chunks.append(chunk)
        lengths.append(steps)
        row0 += len(array)
    return chunks, np.concatenate(lengths).astype(np.int32), width or 1


def read_labels(table: Any, column_name: str, where: Path) -> tuple[np.ndarray, str]:
    """The label column as one array (ints, or strings as objects) and its kind ('int' or 'str')."""
    pa = import_pyarrow()
    if column_name not in table.column_names:
        raise UserError(f"{where}: no column {column_name!r} (columns: {', '.join(table.column_names)}); name yours "
                        "with `label_column`")
    column = table.column(column_name)
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise UserError(f"{where}: row {row}: no label (null)")
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64), "int"
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(column.to_pylist(), dtype=object), "str"
    kind = "float" if pa.types.is_floating(column.type) else str(column.type)
    raise UserError(f"{where}: column {column_name!r} holds {kind} labels: use ints or strings")


def class_label_names(source: Path, table: Any, column: str) -> Optional[list[str]]:
    """The class names of a Hugging Face `ClassLabel` column (its ints index them), from a saved
    split's dataset_info.json or the features a Parquet file written by `datasets` carries; None if none."""
    try:
        if (source / "dataset_info.json").is_file():
            features = json.loads((source / "dataset_info.json").read_text()).get("features", {})
        else:
            metadata = (table.schema.metadata or {}).get(b"huggingface")
            features = json.loads(metadata)["info"]["features"] if metadata else {}
        names = features.get(column, {}).get("names")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


class SplitColumns(NamedTuple):
    """One split as read_chunks and read_labels found it."""

    chunks: list[Chunk]
    lengths: np.ndarray
    channels: int
    labels: np.ndarray
    kind: str


def load_arrow(dataset: str, sequence_column: str, label_column: str
               ) -> tuple[ArrowSplit, Optional[ArrowSplit], Optional[ArrowSplit], SeriesInfo]:
    """(train, validation, test, info): the splits the data has (None for a missing validation or test
    split), read where they lie, and what a model of them must know; the classes are the training
    split's labels, sorted (numbers as numbers)."""
    sources = split_sources(dataset)
    read = {}
    for split, source in sources.items():
        table, maps = read_table(source)
        if sequence_column not in table.column_names:
            raise UserError(f"{source}: no column {sequence_column!r} (columns: {', '.join(table.column_names)}); "
                            "name yours with `sequence_column`")
        labels, kind = read_labels(table, label_column, source)
        read[split] = SplitColumns(*read_chunks(table, sequence_column, source, maps), labels, kind)
        if split == "train":
            names = class_label_names(source, table, label_column) if kind == "int" else None
    train = read["train"]
    classes = sorted(set(train.labels.tolist()))
    index = {label: i for i, label in enumerate(classes)}
    for split, other in read.items():
        if other.kind != train.kind:
            raise UserError(f"{dataset}: the splits' labels are of mixed types (train: {train.kind}; {split}: "
                            f"{other.kind})")
        if other.channels != train.channels:
            raise UserError(f"{dataset}: sequences differ in their numbers of channels: {sources['train']} has "
                            f"{train.channels} channels; {sources[split]} has {other.channels} channels")
        unknown = sorted({str(v) for v in set(other.labels.tolist()) if v not in index})
        if unknown:
            raise UserError(f"{sources[split]}: labels the training split does not have: {', '.join(unknown[:5])}")
    all_lengths = np.concatenate([r.lengths for r in read.values()])
    variable = bool((all_lengths != all_lengths[0]).any())
    named = names is not None and all(0 <= c < len(names) for c in classes)  # a ClassLabel column: its names
    shown = [names[c] if named else str(c) for c in classes]
    info = SeriesInfo(dataset, shown, train.channels, variable, int(all_lengths.max()))

    def on_disk(r: SplitColumns) -> ArrowSplit:
        labels = torch.tensor([index[v] for v in r.labels.tolist()], dtype=torch.int64)
        return ArrowSplit(r.chunks, labels, r.lengths, r.channels, variable)

    return on_disk(train), *(on_disk(read[s]) if s in read else None for s in OPTIONAL_SPLITS), info


def read_sequences(source: Path, column: str) -> list[np.ndarray]:
    """Every row's sequence of one Parquet file or saved dataset split, as (time, channels) float32
    arrays, read a block at a time (predict reads the files a model was trained on)."""
    table, maps = read_table(source)
    if column not in table.column_names:
        raise UserError(f"{source}: no column {column!r} (columns: {', '.join(table.column_names)}); name yours "
                        "with `sequence_column` at training")
    chunks, lengths, channels = read_chunks(table, column, source, maps)
    split = ArrowSplit(chunks, torch.zeros(len(lengths), dtype=torch.int64), lengths, channels, variable_length=False)
    sequences = []
    for start in range(0, len(split), 4096):
        block = split.inputs(slice(start, start + 4096)).numpy()
        sequences += [block[i, :n].copy() for i, n in enumerate(lengths[start:start + 4096])]
    return sequences
