"""dist_rnn from Python. `fit` runs the Trainer that `python -m dist_rnn.train` runs: under
`torchrun script.py` every rank calls it and the run is distributed as the command's; in a notebook
it runs in-process, raises UserError for bad input and leaves no process group or signal handler
behind. `load` gives a trained model back as a Classifier (predict, predict_proba, export)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from dist_rnn.checkpoint import (
    BEST_NAME,
    TrainState,
    checkpoint_dir,
    latest_valid,
    load_checkpoint,
    problem,
    rng_state,
    set_rng_state,
    trained_config,
    trained_model,
)
from dist_rnn.config import TrainConfig, checked_config
from dist_rnn.data.arrays import ARRAYS, SequenceDataset, array_splits
from dist_rnn.data.views import trained_view
from dist_rnn.distributed import configured, single_process_device
from dist_rnn.errors import UserError
from dist_rnn.train import Trainer


@dataclass
class FitResult:
    """What a run ended with: results.json's figures (None where the run has none), where its files
    are, and its metrics events (`history`, on rank 0; empty on the other ranks)."""

    test_accuracy: Optional[float]
    val_accuracy: Optional[float]
    best_val_accuracy: Optional[float]
    best_test_accuracy: Optional[float]
    out_dir: Path
    checkpoint: Path
    best_checkpoint: Optional[Path]
    history: list[dict[str, Any]]
    results: dict[str, Any]


def fit(config: Optional[TrainConfig] = None, train: Any = None, test: Any = None, val: Any = None) -> FitResult:
    """Train as `config` says. Without `train`, on the data the config names (`dataset`, `data_dir`);
    with it, on a SequenceDataset or any map-style Dataset of (sequence, label) items, and on the
    `test` and `val` sets given with it (each optional). Raises UserError for bad input."""
    c = config or TrainConfig()
    if train is None and (test is not None or val is not None):
        raise UserError("`test` and `val` sets go with a `train` set (without it the config's `dataset` is read)")
    if train is not None:
        c = dataclasses.replace(c, dataset=ARRAYS)
    c = checked_config(c, validation_given=val is not None)
    source = None if train is None else (lambda: array_splits(train, val, test))
    rng = rng_state(torch.device("cpu"))  # seeding and a resume set the generators: put back after
    with configured(c, restore=True) as env:
        trainer = Trainer(c, env, source, command=f"dist_rnn.fit in {' '.join(map(shlex.quote, sys.argv)) or 'python'}")
        out_dir, main = trainer.out_dir, env.is_main
        try:
            results = trainer.train()
        finally:
            del trainer  # DDP holds the process group: let go of it before the group is destroyed
            gc.collect()
            set_rng_state(rng, torch.device("cpu"))
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()] if main else []
    best = results.get("best_checkpoint")
    return FitResult(results["test_accuracy"], results.get("val_accuracy"), results.get("best_val_accuracy"),
                     results.get("best_test_accuracy"), out_dir, Path(results["checkpoint"]),
                     Path(best) if best else None, history, results)


class Classifier:
    """A trained model: `predict(X)` gives the labels as they were at training, `predict_proba(X)`
    an (n, classes) array, with the training's input view (standardisation, pixel order) applied.
    X: sequences as SequenceDataset takes them, or uint8 images (n, H, W) for an image model."""

    def __init__(self, module: nn.Module, view: Any, classes: list[Any], config: TrainConfig, checkpoint: Path,
                 device: torch.device, batch_size: int = 1000):
        self.module, self.view, self.config, self.checkpoint = module, view, config, checkpoint
        self.device, self.batch_size = device, batch_size
        self.classes_ = np.array(classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, (n, classes), in batches of `batch_size`."""
        if isinstance(X, SequenceDataset):
            X = X.sequences
        if len(X) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        out = []
        with torch.no_grad():
            for start in range(0, len(X), self.batch_size):
                logits = self.module(self.view.read(X[start:start + self.batch_size], self.device))
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def export(self, path: "str | Path") -> Path:
        """A TorchScript file that plain torch runs without dist_rnn (torch.jit.load): raw inputs in
        (a padded float batch (N, T, C), plus the lengths (N,) for a model of unequal lengths; or uint8
        images (N, H, W)), the same probabilities out as predict_proba. Written atomically."""
        # CPU copies: a traced module shares its parameters, and the file must run without a GPU.
        view, example = copy.deepcopy(self.view).to(torch.device("cpu")).exportable()
        exported = Exported(view, copy.deepcopy(self.module).cpu()).eval()
        # Traced, so that packing and the LSTM need no scripting; the tracer's warnings concern loops
        # over the directions (a constant) and torch.jit's deprecation: tests run other batch sizes.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(exported, example, check_trace=False)
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        traced.save(str(partial))
        partial.replace(path)
        return path


class Exported(nn.Module):
    """The input view, the model and the softmax: what Classifier.export traces."""

    def __init__(self, view: nn.Module, model: nn.Module):
        super().__init__()
        self.view, self.model = view, model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.view(*inputs)).float(), dim=1)


def checkpoint_of(path: Path) -> Path:
    """The checkpoint file a path names: itself, or a run directory's best.pt (the best validation
    score's weights) when it has a sound one, else its newest sound step-<N>.pt."""
    if not path.is_dir():
        return path
    best = checkpoint_dir(path) / BEST_NAME
    if best.is_file():
        broken = problem(best)
        if broken is None:
            return best
        print(f"warning: {best}: {broken}; the newest step checkpoint is loaded instead", file=sys.stderr)
    newest = latest_valid(path, lambda line: print(line, file=sys.stderr))
    if newest is None:
        raise UserError(f"{path}: no checkpoint in {checkpoint_dir(path)}")
    return newest


def load(path: "str | Path", device: str = "cpu", verbose: bool = True) -> Classifier:
    """A trained model from a checkpoint file or a run directory (see checkpoint_of: it says which
    file it took); a file that is not a sound dist_rnn checkpoint is a UserError."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"`device`={device}: choose auto, cpu or cuda")
    file = checkpoint_of(Path(path))
    snapshot = load_checkpoint(file)
    config = trained_config(snapshot, str(file))
    state = TrainState.from_checkpoint(snapshot)
    target = single_process_device(device)
    view = trained_view(config, state.view).to(target)
    model = trained_model(snapshot, config, input_size=view.input_size).to(target)
    if verbose and Path(path).is_dir():
        print(f"dist_rnn.load: {file} (step {state.step})", file=sys.stderr)
    return Classifier(model, view, view.classes, config, file, target)
