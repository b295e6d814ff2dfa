"""dist_rnn: train (Bi)LSTM classifiers on MNIST-as-sequences, one process or many (DDP)."""

__version__ = "0.1.0"
