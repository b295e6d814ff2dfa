"""The files a user asks a trained model to classify, read as the kind of data it was trained on:
image files as MNIST-style digits (digits.py), sequence files (.ts, .npy, .csv, Parquet or a saved
dataset split) as (time, channels) arrays. A file that cannot be read is kept with its error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from dist_rnn.config import TrainConfig
from dist_rnn.data.arrow import read_sequences as read_arrow_sequences
from dist_rnn.data.digits import read_image
from dist_rnn.data.series import read_ts
from dist_rnn.errors import UserError, first_line


class FileInput(NamedTuple):
    """One input read from a file (`name`: the file, or FILE#i for the i-th of several), or why not."""

    name: str
    data: Optional[np.ndarray] = None
    error: Optional[str] = None
    warning: Optional[str] = None


def image_reader(config: TrainConfig, view: Any) -> Callable[[str], list[FileInput]]:
    """Image files made to look like MNIST digits (with a warning when one holds no digit-like ink):
    for a model of MNIST only."""
    if config.dataset != "mnist":
        raise UserError(f"trained on images of `dataset` {config.dataset}, and predict reads handwritten digits "
                        "(MNIST); score it with python -m dist_rnn.evaluate")

    def read(path: str) -> list[FileInput]:
        digit, warning = read_image(path)
        return [FileInput(path, digit, warning=warning)]
    return read


def sequence_reader(config: TrainConfig, view: Any) -> Callable[[str], list[FileInput]]:
    """Every sequence of a file, of the model's channels (FILE#i for the i-th of several), from the
    column it was trained on."""
    def read(path: str) -> list[FileInput]:
        sequences = read_sequences(path, view.info.channels, config.sequence_column)
        return [FileInput(path if len(sequences) == 1 else f"{path}#{i}", s) for i, s in enumerate(sequences)]
    return read


def read_sequences(path: str, channels: int, column: str = "sequence") -> list[np.ndarray]:
    """The (time, channels) sequences of a .ts, .npy or .csv file, or of a Parquet file or saved
    dataset split (its `column`); one line naming the file if not."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".parquet" or (Path(path) / "state.json").is_file():
            sequences = read_arrow_sequences(Path(path), column)
        elif suffix == ".ts":
            sequences = read_ts(Path(path)).sequences
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            sequences = [array] if array.ndim == 2 else list(array) if array.ndim == 3 else None
            if sequences is None:
                raise UserError(f"{path}: a {array.ndim}-d array: expected (time, channels) or (cases, time, channels)")
        elif suffix == ".csv":
            sequences = [read_csv(path)]
        else:
            raise UserError(f"{path}: not a sequence file (.ts, .npy, .csv, .parquet or a saved dataset split)")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({first_line(e)})") from None
    for s in sequences:
        if s.ndim != 2 or s.shape[1] != channels or len(s) == 0:
            raise UserError(f"{path}: a sequence of shape {tuple(s.shape)}: the model reads (time >= 1, {channels})")
    return [np.asarray(s, dtype=np.float32) for s in sequences]


def read_csv(path: str) -> np.ndarray:
    """One sequence, a row per step: a header row is skipped (names, or pandas' default column names
    0, 1, ...), and so is pandas' index column (`DataFrame.to_csv` writes one, its header empty)."""
    with open(path, encoding="utf-8-sig") as fh:  # (a spreadsheet's byte-order mark)
        header = [field.strip() for field in fh.readline().split(",")]
    named = not all(is_number(field) for field in header) or header == [str(i) for i in range(len(header))]
    array = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32, skiprows=int(named), encoding="utf-8-sig")
    return array[:, 1:] if named and header[0] == "" else array


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# How files are read for a model, by the kind of data it was trained on (its view's state "kind").
READERS: dict[str, Callable[[TrainConfig, Any], Callable[[str], list[FileInput]]]] = {
    "images": image_reader, "series": sequence_reader}


def read_files(paths: list[str], config: TrainConfig, view: Any) -> list[FileInput]:
    """The inputs in `paths` for a model trained with `config`, read through its view; a file that
    cannot be read is kept with its error."""
    read = READERS[view.state()["kind"]](config, view)
    inputs = []
    for path in paths:
        try:
            inputs += read(path)
        except UserError as e:
            inputs.append(FileInput(path, error=str(e)))
    return inputs
