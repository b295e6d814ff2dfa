"""Sequences of your own: the UCR/UEA archive's `.ts` problems, read, checked, padded and
standardised, and the view that feeds them to the model (packed when their lengths differ).

`--dataset` names an image set (mnist, fashion-mnist, kmnist: IDX files, see data.py), a UCR/UEA
problem (`JapaneseVowels`: its NAME_TRAIN.ts and NAME_TEST.ts in --data-dir or in the data folder
an installed aeon or sktime wheel ships; neither is imported), or a path to a `X_TRAIN.ts` whose
`X_TEST.ts` is beside it. The `.ts` format (sktime's and aeon's):

    # comments
    @problemName JapaneseVowels
    @dimensions 12              (absent for univariate problems: 1)
    @classLabel true 1 2 3 ...  (the class names, in this order)
    @data
    1.8,1.9,...:-0.2,-0.19,...:...:3     channels split by ':', values by ',', the label last

A missing value (`?`, or `NaN` as pandas writes one) becomes NaN, then the channel's mean (0 after
standardisation); the start of a run says how many the training split has.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from dist_rnn.config import IMAGE_SETS
from dist_rnn.data.splits import SplitRows, batch_as_read
from dist_rnn.errors import UserError

PACKAGES = ("aeon", "sktime")  # wheels that ship UCR/UEA problems as NAME/NAME_TRAIN.ts under datasets/data


@dataclass
class TsFile:
    """One split of a `.ts` problem: a sequence per case ([length, channels], float32), its class
    index, the class names in the header's order."""

    sequences: list[np.ndarray]
    labels: np.ndarray
    classes: list[str]
    problem: str


def read_ts(path: Path) -> TsFile:
    """Read a `.ts` classification file; a UserError names the file and line of the first problem."""
    try:
        lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    header: dict[str, str] = {}
    data_at = None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if not text.startswith("@"):
            raise UserError(f"{path}:{number}: expected a @tag line or @data before the data, got {text[:40]!r}")
        tag, value = (text[1:].split(None, 1) + [""])[:2]
        tag = tag.lower()
        if tag == "data":
            data_at = number
            break
        header[tag] = value.strip()
    if data_at is None:
        raise UserError(f"{path}: no @data line: not a .ts file")
    if "targetlabel" in header:
        raise UserError(f"{path}: a regression problem (@targetLabel): dist_rnn trains classifiers")
    if header.get("timestamps", "false").lower() == "true":
        raise UserError(f"{path}: @timeStamps true: time-stamped .ts files are not supported (values only)")
    labelled, *classes = header.get("classlabel", "").split()
    if labelled.lower() != "true":
        raise UserError(f"{path}: no '@classLabel true ...' line: dist_rnn needs labelled classification data")
    if not classes:
        raise UserError(f"{path}: '@classLabel true' lists no class labels")
    if len(set(classes)) != len(classes):
        raise UserError(f"{path}: '@classLabel' lists a class twice: {' '.join(classes)}")
    dims = header.get("dimensions", header.get("dimension"))
    if dims is None:  # univariate files may leave it out; a multivariate one without it: count the first case's
        first = next((line for line in lines[data_at:] if line.strip() and not line.startswith("#")), ":")
        dims = str(first.count(":"))
    if not dims.isdigit() or int(dims) < 1:
        raise UserError(f"{path}: @dimensions {dims!r}: expected a number of channels >= 1")
    channels = int(dims)
    index = {name: i for i, name in enumerate(classes)}
    sequences, labels = [], []
    for number in range(data_at + 1, len(lines) + 1):
        text = lines[number - 1].strip()
        if not text or text.startswith("#"):
            continue
        sequence, label = _case(text, channels, index, f"{path}:{number}")
        sequences.append(sequence)
        labels.append(label)
    if not sequences:
        raise UserError(f"{path}: no cases after @data")
    return TsFile(sequences, np.array(labels, dtype=np.int64), classes, header.get("problemname", path.stem))


def _case(text: str, channels: int, classes: dict[str, int], where: str) -> tuple[np.ndarray, int]:
    """One data line: `channels` comma-separated series and the label, split by ':'."""
    fields = text.split(":")
    if len(fields) != channels + 1:
        raise UserError(f"{where}: expected {channels} channel(s) and a label separated by ':', "
                        f"found {len(fields)} field(s)")
    label = fields[-1].strip()
    if label not in classes:
        raise UserError(f"{where}: label {label!r} is not one of the header's @classLabel values "
                        f"({' '.join(classes)})")
    series = []
    for c, field in enumerate(fields[:-1], 1):
        if not field.strip():
            raise UserError(f"{where}: channel {c}: a sequence of length 0")
        values = field.split(",")
        try:
            series.append([_value(v) for v in values])
        except ValueError:
            bad = next(v for v in values if not _is_number(v)).strip()
            what = "an empty value (a trailing or double comma?)" if not bad else f"bad value {bad[:20]!r}"
            raise UserError(f"{where}: channel {c}: {what}") from None
    lengths = {len(s) for s in series}
    if len(lengths) > 1:
        raise UserError(f"{where}: ragged channels: lengths {sorted(lengths)} (every channel of a case has one length)")
    return np.asarray(series, dtype=np.float32).T.copy(), classes[label]


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _value(text: str) -> float:
    """One value: `?` or `NaN` is missing (NaN); anything else a finite number a float32 holds."""
    if text.strip() == "?" or text.strip().lower() == "nan":
        return float("nan")
    value = float(text)
    if not abs(value) <= FLOAT32_MAX:  # inf, nan written out, or too large for float32
        raise ValueError(text)
    return value


def _is_number(text: str) -> bool:
    try:
        _value(text)
        return True
    except ValueError:
        return False


def _short(value: Any) -> str:
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- finding a problem ------------------------------------------------------------------------------

def package_data_dirs() -> list[tuple[str, Path]]:
    """(package, its datasets/data folder) of each installed wheel that ships UCR/UEA problems,
    found without importing it (their imports pull in numba or scikit-learn)."""
    found = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
            if folder.is_dir():
                found.append((name, folder))
    return found


def problems_in(folder: Path) -> list[str]:
    """The classification problems in a folder of NAME/NAME_TRAIN.ts (regression ones left out)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if _classification(p / f"{p.name}_TRAIN.ts"))


def _classification(path: Path) -> bool:
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("@classlabel"):
                    return line.split()[1:2] == ["true"]
                if line.lower().startswith("@data"):
                    return False
    except OSError:
        return False
    return False


def locate(dataset: str, data_dir: Optional[Path]) -> tuple[Path, Optional[Path]]:
    """The (train, test) `.ts` files `--dataset` names (test None where there is none: a run without a
    test set); one line listing what there is if none."""
    if dataset.endswith(".ts"):
        train = Path(dataset)
        if not train.is_file():
            raise UserError(f"`dataset` {dataset}: no such file")
        if "_TRAIN" not in train.name:
            raise UserError(f"`dataset` {dataset}: name the training file (X_TRAIN.ts), its X_TEST.ts beside it")
        head, _, tail = train.name.rpartition("_TRAIN")
        test = train.with_name(f"{head}_TEST{tail}")
        return train, test if test.is_file() else None
    folders = ([("--data-dir", data_dir)] if data_dir is not None else []) + package_data_dirs()
    for _, folder in folders:
        for base in (folder / dataset, folder):
            train, test = base / f"{dataset}_TRAIN.ts", base / f"{dataset}_TEST.ts"
            if train.is_file():
                return train, test if test.is_file() else None
    known = [f"{', '.join(problems_in(folder))} (in {where}'s data)" for where, folder in folders if problems_in(folder)]
    shipped = "; UCR/UEA problems: " + "; ".join(known) if known else \
        "; no UCR/UEA problems found (pip install --no-deps sktime ships some, or pass --data-dir)"
    raise UserError(f"`dataset` {dataset!r} not found: choose {', '.join(IMAGE_SETS)}, a path to an X_TRAIN.ts"
                    f"{shipped}")


# -- a problem in memory ----------------------------------------------------------------------------

@dataclass
class SeriesInfo:
    """What a model of this problem must know: its classes, channels, and whether lengths differ."""

    dataset: str
    classes: list[Any]
    channels: int
    variable_length: bool
    max_length: int

    def view(self, c: Any, train: Any, saved: Optional[dict[str, Any]]) -> "SeriesView":
        """The standardisation a run trains with: fitted on the training split, or a resumed run's
        saved one, which must describe the same data."""
        if saved is None:
            return SeriesView.fit(self, train, patch_size(c.patch, self.max_length))
        view = SeriesView.from_state(saved)
        view.check_data(self, c.dataset)
        return view

    def loader_dataset(self, train: Any, indices: Any) -> tuple[Any, Any]:
        """The split itself, each DataLoader worker reading whole batches (`--loader dataloader`)."""
        return SplitRows(train), batch_as_read


def load_series(dataset: str, data_dir: Optional[Path]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor, SeriesInfo]:
    """Both splits, padded to one length: (train inputs, train labels, test inputs, test labels, info).
    Inputs are float32 (N, T, C), or (N, T, C + 1) when lengths differ: the last channel's first
    step then holds each case's length (so one index gathers a batch and its lengths; SeriesView
    reads it back)."""
    train_path, test_path = locate(dataset, data_dir)
    train = read_ts(train_path)
    name = train.problem if not dataset.endswith(".ts") else dataset
    if test_path is None:
        return padded_splits(name, train, None)
    test = read_ts(test_path)
    if sorted(test.classes) != sorted(train.classes):
        raise UserError(f"{test_path}: its @classLabel values ({' '.join(test.classes)}) differ from "
                        f"{train_path.name}'s ({' '.join(train.classes)})")
    if test.classes != train.classes:  # the same classes listed in another order: the training file's order
        order = np.array([train.classes.index(name) for name in test.classes])
        test = TsFile(test.sequences, order[test.labels], train.classes, test.problem)
    return padded_splits(name, train, test, (str(train_path), str(test_path)))


def padded_splits(dataset: str, train: TsFile, test: Optional[TsFile], names: tuple[str, str] = ("training", "test")
                  ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], SeriesInfo]:
    """Two splits of one problem (the same classes; no test split: None), padded to the longest
    sequence of either, and what a model of them must know; one line naming each split (`names`) if
    their channel counts differ."""
    splits = [split for split in (train, test) if split is not None]
    counts = [sorted({s.shape[1] for s in split.sequences}) for split in splits]
    channels = {c for count in counts for c in count}
    if len(channels) > 1:
        said = [f"{name} {'has' if len(c) == 1 else 'mixes'} {' and '.join(map(str, c))} channels"
                for name, c in zip(names, counts)]
        raise UserError(f"{dataset}: sequences differ in their numbers of channels: {'; '.join(said)}")
    lengths = [len(s) for split in splits for s in split.sequences]
    info = SeriesInfo(dataset, train.classes, channels.pop(), len(set(lengths)) > 1, max(lengths))
    return (*padded(train, info), *(padded(test, info) if test is not None else (None, None)), info)


def padded(split: TsFile, info: SeriesInfo) -> tuple[torch.Tensor, torch.Tensor]:
    width = info.channels + (1 if info.variable_length else 0)
    x = np.zeros((len(split.sequences), info.max_length, width), dtype=np.float32)
    for i, s in enumerate(split.sequences):
        x[i, :len(s), :info.channels] = s
        if info.variable_length:
            x[i, 0, info.channels] = len(s)
    return torch.from_numpy(x), torch.from_numpy(split.labels)


def as_sequence_list(X: Any, what: str = "X") -> list[np.ndarray]:
    """X as float32 `(T_i, C)` arrays: an array `(n, T, C)`, a 2-D `(n, T)` (one channel), or a list
    of `(T_i, C)` or `(T_i,)` arrays; one line naming what is wrong."""
    if torch.is_tensor(X):
        X = X.detach().cpu().numpy()
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim not in (2, 3):
            raise UserError(f"{what}: a {X.ndim}-d array: expected (cases, time, channels) or (cases, time)")
        items: list[Any] = list(X)
    elif isinstance(X, (list, tuple)) or (isinstance(X, np.ndarray) and X.ndim == 1):
        items = list(X)
    else:
        raise UserError(f"{what}: a {type(X).__name__}: expected an array or a list of (time, channels) arrays")
    sequences = []
    for i, item in enumerate(items):
        s = np.asarray(item.detach().cpu() if torch.is_tensor(item) else item)
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2 or len(s) == 0:
            raise UserError(f"{what}[{i}]: a sequence of shape {s.shape}: expected (time >= 1, channels)")
        if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
            raise UserError(f"{what}[{i}]: holds {s.dtype} values, not real numbers")
        s = s.astype(np.float32)
        if np.isinf(s).any():
            raise UserError(f"{what}[{i}]: holds infinite values (NaN marks a missing one)")
        sequences.append(s)
    if not sequences:
        raise UserError(f"{what}: no sequences")
    channels = {s.shape[1] for s in sequences}
    if len(channels) > 1:
        raise UserError(f"{what}: sequences with different numbers of channels ({sorted(channels)})")
    return sequences


class SeriesView:
    """Padded cases -> what the RNN reads: each channel standardised with the training split's mean
    and standard deviation (fitted once, saved in checkpoints), a missing value made 0 (the mean),
    and, when lengths differ, packed (`pack_padded_sequence`, enforce_sorted=False) so that no step
    of padding is read and each direction's final state is the case's own."""

    permutation = None  # (the image views' pixel order: none here)

    def __init__(self, info: SeriesInfo, mean: list[float], std: list[float], patch: int = 1, missing: int = 0):
        self.info, self.patch, self.missing = info, patch, missing  # missing: values the training split lacks
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    @classmethod
    def fit(cls, info: SeriesInfo, split: Any, patch: int = 1) -> "SeriesView":
        """Standardisation from the real (not padded, not missing) values of the training split, read
        a block of cases at a time (a split on disk is never held whole in memory): float64 sums for
        the mean, then the squared deviations from it."""
        blocks = range(0, len(split), max(1, (1 << 20) // max(1, info.max_length * (info.channels + 1))))
        sums = torch.zeros(3, info.channels, dtype=torch.float64)  # count, sum, then squared deviations

        def real_values(start: int) -> tuple[torch.Tensor, torch.Tensor]:
            inputs = split.inputs(slice(start, start + blocks.step)).cpu()
            values = inputs[..., :info.channels].double()
            real = torch.ones(values.shape[:2], dtype=torch.bool)
            if info.variable_length:
                lengths = inputs[:, 0, info.channels].long()
                real = torch.arange(values.shape[1])[None, :] < lengths[:, None]
            return values, real[..., None] & ~values.isnan()

        missing = 0
        for start in blocks:
            values, mask = real_values(start)
            sums[0] += mask.sum((0, 1))
            missing += int(values.isnan().sum())  # (padding is 0, never NaN)
            sums[1] += torch.where(mask, values, 0).sum((0, 1))
        count = sums[0].clamp(min=1)
        mean = sums[1] / count
        for start in blocks:
            values, mask = real_values(start)
            sums[2] += torch.where(mask, (values - mean) ** 2, 0).sum((0, 1))
        std = (sums[2] / count).sqrt()
        # a constant channel (up to rounding) is only centred, not blown up
        std = torch.where(std > 1e-6 * mean.abs().clamp(min=1), std, torch.ones_like(std))
        return cls(info, mean.float().tolist(), std.float().tolist(), patch, missing)

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, so evaluate and predict rebuild this view without the data."""
        return {"kind": "series", "dataset": self.info.dataset, "classes": self.info.classes, "channels": self.info.channels,
                "variable_length": self.info.variable_length, "max_length": self.info.max_length,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "patch": self.patch}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SeriesView":
        info = SeriesInfo(state["dataset"], state["classes"], state["channels"], state["variable_length"],
                          state["max_length"])
        return cls(info, state["mean"], state["std"], state.get("patch", 1))  # no patch before format 4

    def check_data(self, info: SeriesInfo, dataset: str) -> None:
        """The data now must be what this view was fitted on: the same classes (in order), channels and
        kind of lengths; else a resume or an evaluation would read it wrongly (one line)."""
        saved = self.info
        if not isinstance(info, SeriesInfo):
            raise UserError(f"`dataset` {dataset}: images, and the checkpoint was trained on sequences")
        if saved.classes == [str(i) for i in range(len(info.classes))]:  # saved before ClassLabel names were read
            info = dataclasses.replace(info, classes=saved.classes)
        for what, was, now in (("classes", saved.classes, info.classes), ("channels", saved.channels, info.channels),
                               ("variable lengths", saved.variable_length, info.variable_length)):
            if was != now:
                raise UserError(f"`dataset` {dataset}: its {what} ({_short(now)}) differ from those the checkpoint "
                                f"was trained on ({_short(was)})")

    @property
    def classes(self) -> list[Any]:
        return list(self.info.classes)

    def answer(self, index: int) -> dict[str, Any]:
        """What predict reports for class `index`: the class as named in the data, and its index."""
        return {"class": self.classes[index], "class_index": index}

    def describe(self, dataset: str) -> str:
        """`JapaneseVowels: 9 classes, 12 channel(s), lengths up to 29, packed`."""
        s = self.info
        return (f"{s.dataset}: {len(s.classes)} classes, {s.channels} channel(s), "
                f"{'lengths up to' if s.variable_length else 'length'} {s.max_length}"
                f"{f', read as {self.steps} patches of {self.patch} steps' if self.patch > 1 else ''}"
                f"{', packed' if s.variable_length else ''}")

    def warning(self) -> Optional[str]:
        """Missing values filled, or a sign that the data is laid out (cases, channels, time), as aeon
        and sktime keep it."""
        s, said = self.info, []
        if self.missing:
            said.append(f"{self.missing:,} missing values (NaN, or ? in a .ts file) in the training split are read "
                        "as their channel's mean")
        if s.channels > s.max_length:
            said.append(f"every sequence has more channels ({s.channels}) than steps (at most {s.max_length}): "
                        "dist_rnn reads (cases, time, channels); if yours is laid out (cases, channels, time), as "
                        "aeon and sktime keep arrays, it needs X.transpose(0, 2, 1)")
        return "; ".join(said) or None

    @property
    def input_size(self) -> int:
        return self.info.channels * self.patch

    @property
    def steps(self) -> int:
        return -(-self.info.max_length // self.patch)

    def to(self, device: torch.device) -> "SeriesView":
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def read(self, X: Any, device: torch.device) -> PackedSequence:
        """Sequences handed over in Python (see arrays.as_sequence_list), each packed at its own
        length (equal lengths give what an unpacked batch gives) and standardised as in training."""
        sequences = as_sequence_list(X)
        if sequences[0].shape[1] != self.info.channels:
            raise UserError(f"X: sequences of {sequences[0].shape[1]} channel(s): the model reads {self.info.channels}")
        info = dataclasses.replace(self.info, variable_length=True, max_length=max(len(s) for s in sequences))
        inputs, _ = padded(TsFile(sequences, np.zeros(len(sequences), dtype=np.int64), info.classes, ""), info)
        return SeriesView(info, self.mean.tolist(), self.std.tolist(), self.patch).to(device)(inputs.to(device))

    def exportable(self) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """This view as a module of raw inputs (a padded float batch (N, T, C), and the lengths (N,)
        when lengths differ), and example inputs to trace it with."""
        lengths = torch.tensor([2, 1]) if self.info.variable_length else None
        example = (torch.zeros(2, 2, self.info.channels),) + (() if lengths is None else (lengths,))
        return Standardise(self.mean.cpu(), self.std.cpu(), self.patch), example

    def __call__(self, inputs: torch.Tensor) -> "torch.Tensor | PackedSequence":
        x = ((inputs[..., :self.info.channels] - self.mean) / self.std).nan_to_num_(0.0, posinf=0.0, neginf=0.0)
        lengths = inputs[:, 0, self.info.channels].long() if self.info.variable_length else None
        if self.patch > 1:
            x, lengths = patched(x, lengths, self.patch)
        if lengths is None:
            return x
        # pack_padded_sequence wants the lengths on the CPU (one small copy per batch on a GPU)
        return pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)


def patched(x: torch.Tensor, lengths: Optional[torch.Tensor], k: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N, T, C) standardised -> (N, ceil(T / k), k * C): k consecutive steps side by side, as MNIST's
    rows put 28 pixels side by side; the steps past a case's end or past T are 0 (the training mean),
    and lengths count patches. Shape arithmetic stays in tensor ops, so a traced export takes any T."""
    if lengths is not None:
        step = torch.ones_like(x[:, :, 0]).cumsum(1)  # 1 .. T
        x = x.masked_fill((step > lengths[:, None].to(x.dtype))[..., None], 0.0)
        lengths = torch.div(lengths + (k - 1), k, rounding_mode="floor")
    x = F.pad(x, (0, 0, 0, k - 1)).unfold(1, k, k)  # (N, ceil(T / k), C, k)
    return x.transpose(2, 3).flatten(2), lengths


AUTO_PATCH_FROM = 100  # series length from which --patch auto patches (docs/datasets.md: the benchmark)


def patch_size(patch: str, max_length: int) -> int:
    """--patch as a number of steps: K itself, or for 'auto' round(sqrt(T)) on series of at least
    AUTO_PATCH_FROM steps (1 below: short series read well step by step). K must leave 2 patches."""
    k = (round(max_length ** 0.5) if max_length >= AUTO_PATCH_FROM else 1) if patch == "auto" else int(patch)
    if k > 1 and k >= max_length:
        raise UserError(f"`patch` {k} would read the series (of {max_length} steps at most) in one step: "
                        f"give fewer than {max_length} steps, or 'auto'")
    return k


class Standardise(nn.Module):
    """SeriesView's arithmetic on raw inputs: standardised, a missing value made 0, patched, packed by
    `lengths` where given."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, patch: int = 1):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.patch = patch

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> "torch.Tensor | PackedSequence":
        x = ((x - self.mean) / self.std).nan_to_num(0.0, posinf=0.0, neginf=0.0)
        if self.patch > 1:
            x, lengths = patched(x, lengths, self.patch)
        if lengths is None:
            return x
        return pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
