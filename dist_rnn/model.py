"""The many-to-one recurrent classifier: a stacked (bi)directional RNN/GRU/LSTM and a linear readout."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

if TYPE_CHECKING:
    from dist_rnn.config import TrainConfig

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
READOUTS = ("last", "final", "max")


class RNNClassifier(nn.Module):
    """Reads a (batch, time, features) sequence and returns (batch, num_classes) logits. readout="final"
    reads each direction's final hidden state (the correct many-to-one readout); "last" is the original
    scripts' `out[:, -1, :]`, wrong for a bidirectional net (docs/design-notes.md, 'The two readouts');
    "max" takes the top layer's largest output over each sequence's own steps (max pooling).
    """

    def __init__(self, input_size: int, hidden_size: int = 128, num_layers: int = 2,
                 num_classes: int = 10, cell: str = "lstm", bidirectional: bool = False,
                 dropout: float = 0.0, readout: str = "final", head_dropout: float = 0.0):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        self.readout = readout
        self.num_directions = 2 if bidirectional else 1
        # batch_first=True only changes the layout of the input and output tensors, not the maths.
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                               bidirectional=bidirectional, dropout=dropout)
        # nn.LSTM's dropout acts between stacked layers only; this one acts on what the classifier reads.
        self.head_dropout = nn.Dropout(head_dropout)
        self.fc = nn.Linear(hidden_size * self.num_directions, num_classes)

    def forward(self, x: "torch.Tensor | PackedSequence") -> torch.Tensor:
        return self.fc(self.head_dropout(self.features(x)))

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def features(self, x: "torch.Tensor | PackedSequence") -> torch.Tensor:
        """What the classifier reads: (B, dirs * H), forward direction's half first. A PackedSequence
        (sequences of different lengths) reads each sequence's own steps only: h_n then holds, per
        sequence, the forward state after its real last step and the backward state after its first."""
        with recurrent_precision(x):
            out, state = self.rnn(x)  # out: (B, T, dirs * H), or packed
        if self.readout == "max":
            return max_pooled(out)
        if self.readout == "last":
            if isinstance(out, PackedSequence):  # the output at each sequence's own last step
                out, lengths = pad_packed_sequence(out, batch_first=True)
                return out[torch.arange(lengths.shape[0]), lengths - 1]  # (shape, not len: traced by export)
            return out[:, -1, :]
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
        # h_n: (layers * dirs, B, H), top layer last: [..., top forward, top backward]
        return torch.cat(list(h_n[-self.num_directions:]), dim=1)


def max_pooled(out: "torch.Tensor | PackedSequence") -> torch.Tensor:
    """The outputs' largest value over time, (B, dirs * H); packed: over each sequence's own steps."""
    if not isinstance(out, PackedSequence):
        return out.amax(1)
    out, lengths = pad_packed_sequence(out, batch_first=True)
    past_end = torch.arange(out.shape[1], device=out.device).unsqueeze(0) >= lengths.to(out.device).unsqueeze(1)
    return out.masked_fill(past_end.unsqueeze(2), float("-inf")).amax(1)


class Ensemble(nn.Module):
    """Models of one problem, each with the input view it was trained with, as one model of raw
    inputs: the log of their mean probabilities (so its argmax and cross-entropy are the ensemble's)."""

    def __init__(self, members: list[tuple[Callable[[torch.Tensor], Any], nn.Module]]):
        super().__init__()
        self.views = [view for view, _ in members]
        self.members = nn.ModuleList(model for _, model in members)

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([m(view(inputs)).float().log_softmax(1) for view, m in zip(self.views, self.members)])
        return log_probs.logsumexp(0) - math.log(len(self.members))


def recurrent_precision(x: "torch.Tensor | PackedSequence") -> ContextManager:
    """bf16 autocast on CUDA leaves the recurrent layers in fp32: autocast's cuDNN RNN wrapper would run
    them in fp16, without loss scaling, whatever dtype was asked for (docs/design-notes.md, 'bf16 and
    cuDNN's RNN under autocast')."""
    data = x.data if isinstance(x, PackedSequence) else x
    if data.is_cuda and torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16:
        return torch.autocast("cuda", enabled=False)
    return contextlib.nullcontext()


def build_model(c: "TrainConfig", input_size: int, num_classes: int = 10) -> RNNClassifier:
    """The classifier a TrainConfig describes (for training, and to rebuild one from a checkpoint)."""
    return RNNClassifier(input_size, c.hidden_size, c.num_layers, num_classes, c.cell,
                         c.bidirectional, c.dropout, c.readout, c.head_dropout)


def count_parameters(c: "TrainConfig", input_size: int, num_classes: int = 10) -> int:
    """The parameters build_model would make, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(c, input_size, num_classes).parameters())
