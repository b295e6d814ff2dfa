"""A scikit-learn estimator over dist_rnn.fit: `RNNClassifier().fit(X, y).predict(X)`, usable with
clone, cross_val_score, GridSearchCV and Pipeline. X follows the time-series ecosystem's layout
(aeon, sktime): (n_cases, n_channels, n_timepoints), (n_cases, n_timepoints) for one channel, or a
list of (n_channels, n_timepoints_i) arrays for unequal lengths. Needs scikit-learn
(`pip install 'dist-rnn[sklearn]'`)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dist_rnn.api import Classifier, fit, load
from dist_rnn.config import TrainConfig
from dist_rnn.data.arrays import SequenceDataset


def time_major(X: Any) -> Any:
    """aeon's (n, channels, time) layout as dist_rnn's (n, time, channels); a 2-D (n, time) array
    and 1-D series stay as they are (one channel)."""
    if torch.is_tensor(X):
        X = X.detach().cpu().numpy()
    if isinstance(X, np.ndarray) and X.dtype != object:
        return X.transpose(0, 2, 1) if X.ndim == 3 else X
    return [np.asarray(s).T for s in X]


class RNNClassifier(ClassifierMixin, BaseEstimator):
    """A recurrent classifier trained by dist_rnn (one process here; the options are TrainConfig's).
    `random_state` is the run's seed (an int gives the command's `--seed`); `class_weight`="balanced" is
    `--class-weights balanced`. The run's files are
    written to a temporary directory that is removed once the model is in memory, unless `out_dir`
    keeps them. With `val_size`, the weights of the best validation score are kept."""

    def __init__(self, cell: str = "lstm", bidirectional: bool = False, hidden_size: int = 128, num_layers: int = 2,
                 dropout: float = 0.0, readout: str = "final", epochs: int = 10, batch_size: int = 100,
                 lr: float = 0.001, optimizer: str = "adam", lr_schedule: str = "constant", grad_clip: Optional[float] = None,
                 val_size: float = 0.0, early_stop: Optional[int] = None, random_state: Any = None,
                 device: str = "cpu", threads: int = 0, out_dir: Optional[str] = None, verbose: bool = False,
                 patch: Any = 1, weight_decay: float = 0.0, class_weight: Optional[str] = None):
        self.cell, self.bidirectional, self.hidden_size, self.num_layers = cell, bidirectional, hidden_size, num_layers
        self.dropout, self.readout, self.patch, self.epochs = dropout, readout, patch, epochs
        self.batch_size, self.lr = batch_size, lr
        self.optimizer, self.lr_schedule, self.grad_clip = optimizer, lr_schedule, grad_clip
        self.val_size, self.early_stop, self.random_state = val_size, early_stop, random_state
        self.device, self.threads, self.out_dir, self.verbose = device, threads, out_dir, verbose
        self.weight_decay, self.class_weight = weight_decay, class_weight

    def _config(self, out_dir: str) -> TrainConfig:
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else \
            int(check_random_state(self.random_state).randint(2 ** 31))
        options = {name: getattr(self, name) for name in (
            "cell", "bidirectional", "hidden_size", "num_layers", "dropout", "readout", "epochs", "batch_size", "lr",
            "optimizer", "lr_schedule", "grad_clip", "val_size", "early_stop", "device", "threads", "weight_decay")}
        return TrainConfig(**options, patch=str(self.patch), class_weights=self.class_weight or "none", seed=int(seed),
                           out_dir=out_dir, resume="none", overwrite=True)

    def fit(self, X: Any, y: Any) -> "RNNClassifier":
        data = SequenceDataset(time_major(X), y)
        with contextlib.ExitStack() as stack:
            folder = self.out_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="dist_rnn-"))
            if not self.verbose:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            result = fit(self._config(str(Path(folder) / "run") if self.out_dir is None else folder), train=data)
            self.model_: Classifier = load(result.best_checkpoint or result.checkpoint, device=self.device)
        self.classes_ = self.model_.classes_
        self.n_channels_ = data.sequences[0].shape[1]
        self.history_ = result.history
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(time_major(X))

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict(time_major(X))
