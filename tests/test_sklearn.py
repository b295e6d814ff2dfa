"""dist_rnn.sklearn.RNNClassifier: the command's training behind scikit-learn's estimator rules."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import needs
from fit_worker import series

from dist_rnn import load
from dist_rnn import train as train_command
from dist_rnn.data.series import locate, read_ts
from dist_rnn.errors import UserError

pytestmark = needs("sklearn")


def aeon_layout(sequences: list) -> list:
    """(T_i, C) sequences as aeon's list of (n_channels, n_timepoints_i) arrays."""
    return [s.T for s in sequences]


def estimator(**options):
    from dist_rnn.sklearn import RNNClassifier

    return RNNClassifier(**{"hidden_size": 8, "epochs": 1, "batch_size": 20, "lr": 0.01, "random_state": 0, **options})


def test_japanese_vowels_as_the_command_trains_it(tmp_path):
    """The refit configuration of docs/datasets.md (epochs cut to 3 here) through RNNClassifier on
    aeon's list layout, and through the command with the same seed: bitwise the same model on CPU."""
    try:
        train_file, test_file = locate("JapaneseVowels", None)
    except UserError:
        pytest.skip("JapaneseVowels is not installed (pip install --no-deps sktime)")
    train, test = read_ts(train_file), read_ts(test_file)
    refit = dict(bidirectional=True, hidden_size=64, num_layers=2, batch_size=30, lr=0.01, epochs=3)
    model = estimator(**refit).fit(aeon_layout(train.sequences), np.array(train.classes)[train.labels])
    assert train_command.main(["--dataset", "JapaneseVowels", "--bidirectional", "--hidden-size", "64", "--epochs", "3",
                               "--batch-size", "30", "--lr", "0.01", "--seed", "0", "--out-dir", str(tmp_path)]) == 0
    command = load(tmp_path)
    assert np.array_equal(model.predict_proba(aeon_layout(test.sequences)), command.predict_proba(test.sequences))
    truth = np.array(test.classes)[test.labels]
    assert model.score(aeon_layout(test.sequences), truth) == (command.predict(test.sequences) == truth).mean() > 0.5


def test_clone_pickle_cross_validation_grid_search_and_pipeline():
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    (train_x, train_y), (test_x, test_y) = series(120, 1), series(30, 2)
    X, Xt = aeon_layout(train_x), aeon_layout(test_x)
    model = estimator(val_size=20, epochs=2)
    assert clone(model).get_params() == model.get_params() and not hasattr(clone(model), "model_")
    assert model.fit(X, train_y) is model and list(model.classes_) == ["high", "low", "mid"]
    restored = pickle.loads(pickle.dumps(model))
    assert np.array_equal(restored.predict_proba(Xt), model.predict_proba(Xt))
    assert model.predict(Xt).dtype.kind == "U" and 0 <= model.score(Xt, test_y) <= 1

    scores = cross_val_score(estimator(), X, train_y, cv=3)
    assert scores.shape == (3,) and all(0 <= s <= 1 for s in scores)
    search = GridSearchCV(estimator(), {"hidden_size": [4, 8], "lr": [0.01, 0.003]}, cv=2).fit(X, train_y)
    assert len(search.cv_results_["params"]) == 4 and search.best_estimator_.model_ is not None
    pipeline = make_pipeline(FunctionTransformer(lambda xs: [x * 2 for x in xs]), estimator()).fit(X, train_y)
    assert pipeline.predict(Xt).shape == (30,)


def test_equal_length_array_layout_and_files_cleaned_up(tmp_path, monkeypatch):
    """A 3-D (n, channels, time) array trains; the run's temporary files are gone afterwards."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    train_x, train_y = series(60, 1)
    X = np.stack([s[:5].T for s in train_x])  # (60, 2, 5)
    model = estimator().fit(X, train_y)
    assert model.n_channels_ == 2 and model.predict(X[:4]).shape == (4,)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("dist_rnn-")] == []  # (torch leaves its own)
