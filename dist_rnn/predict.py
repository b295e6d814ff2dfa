"""`python -m dist_rnn.predict --checkpoint C FILE [FILE ...]`: classify image files (an MNIST model)
or sequences (a model of a UCR/UEA problem or a .ts file) with a trained dist_rnn model: the class and
its probability per file (--json for machine-readable output).

Images, any size, grayscale or colour: each is made to look like an MNIST digit first (light digit on
a dark background, fitted into a 20x20 box and centred by its centre of mass in 28x28, the way MNIST
itself was made), so a photo or a drawing of a dark digit on white paper works.

Sequences: a .ts file (every case in it; its labels are not read), a .npy array (time, channels) or
(cases, time, channels), a .csv file of one sequence (a row per time step, a column per channel), or
a Parquet file or saved dataset split (every row of the model's sequence column, as at training),
standardised as in training; each may have its own length.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from dist_rnn.checkpoint import TrainState, load_checkpoint, trained_config, trained_model
from dist_rnn.cli import ArgumentParser, add_dataclass_flags, describe, prog, run_cli
from dist_rnn.config import option
from dist_rnn.data import SequenceView, trained_view
from dist_rnn.data.arrow import read_sequences as read_arrow_sequences
from dist_rnn.data.series import SeriesView, read_ts
from dist_rnn.distributed import single_process_device
from dist_rnn.errors import UserError, first_line

SIDE, BOX = 28, 20  # MNIST: 28x28 images, digits fitted into 20x20


@dataclass
class PredictConfig:
    """Options of `python -m dist_rnn.predict` (the image files are positional)."""

    checkpoint: Optional[str] = option(None, "checkpoint file (required), e.g. runs/x/checkpoints/step-1200.pt")
    json: bool = option(False, "print a JSON list (file, digit or class, its probability, every class's) instead of "
                        "lines")
    device: Literal["auto", "cpu", "cuda"] = option("cpu", "where to run the model")


def foreground(image: Any) -> np.ndarray:
    """A PIL image as float grayscale, light marks on a background brought to 0 (MNIST's polarity)."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    if border(gray).mean() > 127:  # dark digit on a light background: MNIST digits are light on dark
        gray = 255 - gray
    return np.clip(gray - np.median(border(gray)), 0, 255)  # the background (paper, shadows) to 0


def ink_warning(fg: np.ndarray) -> Optional[str]:
    """Why an image's foreground does not look like one digit on a plain background (None when it
    does): a model answers something for any input, so say when the answer cannot mean much."""
    contrast = float(fg.max())
    if contrast < 32:
        return f"no digit-like ink: the image is nearly one shade (its marks differ from the background by " \
               f"{contrast:.0f} of 255)"
    ink = fg > 0.2 * contrast
    covered, at_edges = float(ink.mean()), float(border(ink).mean())
    if covered > 0.5 or at_edges > 0.2:  # a digit on paper leaves the edges clear
        return f"no digit on a plain background: ink covers {covered:.0%} of the image and {at_edges:.0%} of its edges"
    return None


def to_mnist(image: Any) -> np.ndarray:
    """A PIL image as a 28x28 uint8 MNIST-style digit: grayscale, light on dark, fitted and centred."""
    return fit(foreground(image))


def fit(gray: np.ndarray) -> np.ndarray:
    """A foreground (see foreground()) fitted into MNIST's 20x20 box and centred in 28x28."""
    from PIL import Image

    ink = gray > 0.2 * gray.max() if gray.max() > 0 else np.zeros_like(gray, dtype=bool)
    if not ink.any():
        return np.zeros((SIDE, SIDE), dtype=np.uint8)  # a blank image: nothing to centre
    rows, cols = np.nonzero(ink)
    digit = gray[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = BOX / max(digit.shape)
    size = (max(1, round(digit.shape[1] * scale)), max(1, round(digit.shape[0] * scale)))  # (width, height)
    digit = np.asarray(Image.fromarray(digit).resize(size, Image.LANCZOS), dtype=np.float32).clip(0, 255)
    # Centre of mass at the image centre, as MNIST did, kept inside the frame.
    total = digit.sum() or 1.0
    cy = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    cx = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(np.clip(round(SIDE / 2 - cy), 0, SIDE - digit.shape[0]))
    left = int(np.clip(round(SIDE / 2 - cx), 0, SIDE - digit.shape[1]))
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
    return (out * (255 / out.max())).round().astype(np.uint8)


def border(gray: np.ndarray) -> np.ndarray:
    """The pixels along the edges of an image: its background, for a digit in the middle."""
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def read_image(path: str) -> tuple[np.ndarray, Optional[str]]:
    """One image file as an MNIST-style digit, and a warning when it holds no digit-like ink (one
    line naming the file when it cannot be read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            fg = foreground(image)
        return fit(fg), ink_warning(fg)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not an image this can read ({first_line(e)})") from None


def predict(c: PredictConfig, images: list[str]) -> list[dict[str, Any]]:
    """Classify each file; returns one record per file, in order. A file that cannot be read gets a
    record with its `error` instead of a digit, and the others are still classified."""
    snapshot = load_checkpoint(Path(c.checkpoint))
    config = trained_config(snapshot, c.checkpoint)
    device = single_process_device(c.device)
    view_state = TrainState.from_checkpoint(snapshot).view
    view = trained_view(config, view_state).to(device)
    model = trained_model(snapshot, config, input_size=view.input_size).to(device)
    return READERS[view_state["kind"]](c, config, view, model, images, device)


def predict_images(c: PredictConfig, config: Any, view: SequenceView, model: torch.nn.Module, images: list[str],
                   device: torch.device) -> list[dict[str, Any]]:
    """Each image file made to look like an MNIST digit, and classified."""
    if config.dataset != "mnist":  # predict makes each image look like an MNIST digit
        raise UserError(f"{c.checkpoint}: trained on images of `dataset` {config.dataset}, and predict reads "
                        f"handwritten digits (MNIST); score it with python -m dist_rnn.evaluate --checkpoint "
                        f"{c.checkpoint}")
    read: dict[int, tuple[np.ndarray, Optional[str]]] = {}
    records: list[dict[str, Any]] = []
    for i, path in enumerate(images):
        try:
            read[i] = read_image(path)
            records.append({"file": path})
        except UserError as e:
            records.append({"file": path, "error": str(e)})
    if not read:
        return records
    digits = np.stack([digit for digit, _ in read.values()])
    with torch.no_grad():
        probabilities = torch.softmax(model(view.read(digits, device)).float(), dim=1).cpu()
    for (i, (_, warning)), p in zip(read.items(), probabilities):
        records[i].update(digit=int(p.argmax()), probability=round(float(p.max()), 6),
                          probabilities=[round(float(v), 6) for v in p], warning=warning)
    return records


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
            sequences = [np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float32)]
        else:
            raise UserError(f"{path}: not a sequence file (.ts, .npy, .csv, .parquet or a saved dataset split)")
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({first_line(e)})") from None
    for s in sequences:
        if s.ndim != 2 or s.shape[1] != channels or len(s) == 0:
            raise UserError(f"{path}: a sequence of shape {tuple(s.shape)}: the model reads (time >= 1, {channels})")
    return [np.asarray(s, dtype=np.float32) for s in sequences]


def predict_sequences(c: PredictConfig, config: Any, view: SeriesView, model: torch.nn.Module, files: list[str],
                      device: torch.device) -> list[dict[str, Any]]:
    """Classify every sequence of each file (FILE, or FILE#i for the i-th of several); a file that
    cannot be read gets a record with its `error`, and the others are still classified."""
    records: list[dict[str, Any]] = []
    read: list[tuple[int, np.ndarray]] = []
    for path in files:
        try:
            sequences = read_sequences(path, view.info.channels, config.sequence_column)
        except UserError as e:
            records.append({"file": path, "error": str(e)})
            continue
        for i, s in enumerate(sequences):
            read.append((len(records), s))
            records.append({"file": path if len(sequences) == 1 else f"{path}#{i}"})
    if not read:
        return records
    with torch.no_grad():  # each sequence packed at its own length
        probabilities = torch.softmax(model(view.read([s for _, s in read], device)).float(), dim=1).cpu()
    for (i, _), p in zip(read, probabilities):
        records[i].update({"class": view.classes[int(p.argmax())], "class_index": int(p.argmax()),
                           "probability": round(float(p.max()), 6),
                           "probabilities": [round(float(v), 6) for v in p], "warning": None})
    return records


# What a model's files are read as, by the kind of data it was trained on.
READERS = {"images": predict_images, "series": predict_sequences}


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog=prog("dist_rnn.predict"), description=describe(__doc__))
    parser.add_argument("images", nargs="+", metavar="FILE", help="image files (PNG, JPEG, ...; any size) for an "
                        "MNIST model; .ts, .npy, .csv or .parquet files (or a saved dataset split) for a model of "
                        "sequences")
    add_dataclass_flags(parser, PredictConfig)

    def command() -> None:
        args = vars(parser.parse_args(argv))
        files = args.pop("images")
        c = PredictConfig(**args)
        if c.checkpoint is None:
            parser.error("--checkpoint is required")
        records = predict(c, files)
        if c.json:
            print(json.dumps(records, indent=2))
        else:
            for r in records:
                if "error" not in r:
                    print(f"{r['file']}: {r.get('class', r.get('digit'))} (probability {r['probability']:.3f})")
        for r in records:
            if "error" in r:
                print(f"{prog('dist_rnn.predict')}: skipped {r['error']}", file=sys.stderr)
            elif r["warning"]:
                print(f"warning: {r['file']}: {r['warning']}; the answer means little", file=sys.stderr)
        failed = sum("error" in r for r in records)
        if failed:  # after the good files' answers: exit 2, as for any bad input
            raise UserError(f"{failed} of {len(files)} files could not be read (see above)")

    return run_cli(prog("dist_rnn.predict"), command)


if __name__ == "__main__":
    sys.exit(main())
