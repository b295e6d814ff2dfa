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

import torch

from dist_rnn.checkpoint import TrainState, load_checkpoint, trained_config, trained_model
from dist_rnn.cli import ArgumentParser, add_dataclass_flags, describe, prog, run_cli
from dist_rnn.config import option
from dist_rnn.data import trained_view
from dist_rnn.data.files import read_files
from dist_rnn.distributed import single_process_device
from dist_rnn.errors import UserError


@dataclass
class PredictConfig:
    """Options of `python -m dist_rnn.predict` (the files are positional)."""

    checkpoint: Optional[list[str]] = option(None, "checkpoint file (required), e.g. runs/x/checkpoints/step-1200.pt; "
                                             "repeated (models of one data set), an ensemble: their probabilities averaged")
    json: bool = option(False, "print a JSON list (file, digit or class, its probability, and every class's as "
                        "a class -> probability mapping) instead of lines")
    device: Literal["auto", "cpu", "cuda"] = option("cpu", "where to run the model")


def predict(c: PredictConfig, files: list[str]) -> list[dict[str, Any]]:
    """Classify each file's inputs; returns one record per input, in order. A file that cannot be read
    gets a record with its `error` instead of an answer, and the others are still classified."""
    device = single_process_device(c.device)
    members = []  # (config, view, model) of each checkpoint
    for path in c.checkpoint:
        snapshot = load_checkpoint(Path(path))
        config = trained_config(snapshot, path)
        view = trained_view(config, TrainState.from_checkpoint(snapshot).view).to(device)
        members.append((config, view, trained_model(snapshot, config, input_size=view.input_size).to(device)))
        if view.classes != members[0][1].classes:
            raise UserError(f"{path}: its classes differ from {c.checkpoint[0]}'s: an ensemble's models share them")
    config, view, _ = members[0]
    try:
        inputs = read_files(files, config, view)
    except UserError as e:  # the model reads no such files at all
        raise UserError(f"{c.checkpoint[0]}: {e.args[0]}") from None
    records = [{"file": i.name, "error": i.error} if i.error else {"file": i.name} for i in inputs]
    read = [n for n, i in enumerate(inputs) if i.error is None]
    if not read:
        return records
    with torch.no_grad():  # sequences packed each at its own length; an ensemble's probabilities averaged
        probabilities = torch.stack([torch.softmax(m(v.read([inputs[n].data for n in read], device)).float(), dim=1)
                                     for _, v, m in members]).mean(0).cpu()
    names = [str(name) for name in view.classes]
    for n, p in zip(read, probabilities):
        records[n].update(view.answer(int(p.argmax())), probability=round(float(p.max()), 6),
                          probabilities={name: round(float(v), 6) for name, v in zip(names, p)},
                          warning=inputs[n].warning)
    return records


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog=prog("dist_rnn.predict"), description=describe(__doc__))
    parser.add_argument("files", nargs="+", metavar="FILE", help="image files (PNG, JPEG, ...; any size) for an "
                        "MNIST model; .ts, .npy, .csv or .parquet files (or a saved dataset split) for a model of "
                        "sequences")
    add_dataclass_flags(parser, PredictConfig)

    def command() -> None:
        args = vars(parser.parse_args(argv))
        files = args.pop("files")
        c = PredictConfig(**args)
        if c.checkpoint is None:
            parser.error("--checkpoint is required")
        records = predict(c, files)
        if c.json:
            print(json.dumps(records, indent=2))
        else:
            for r in records:
                if "error" not in r:
                    answer = list(r.values())[1]  # the view's answer (a digit, a class) follows the file
                    print(f"{r['file']}: {answer} (probability {r['probability']:.3f})")
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
