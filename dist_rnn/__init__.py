"""dist_rnn: train recurrent sequence classifiers (RNN, GRU, LSTM, bidirectional or not), one process
or many (DDP, torchrun, SLURM), from the command line or from Python:

    import dist_rnn
    result = dist_rnn.fit(dist_rnn.TrainConfig(epochs=5), train=dist_rnn.SequenceDataset(X, y))
    model = dist_rnn.load(result.out_dir)
    model.predict(X_new)
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Imported on first use (PEP 562): `python -m dist_rnn.train` must not find dist_rnn.train imported
# by the package before runpy runs it.
_EXPORTS = {"Classifier": "dist_rnn.api", "FitResult": "dist_rnn.api", "fit": "dist_rnn.api", "load": "dist_rnn.api",
            "TrainConfig": "dist_rnn.config", "SequenceDataset": "dist_rnn.data.arrays", "UserError": "dist_rnn.errors"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dist_rnn' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
