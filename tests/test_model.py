"""RNNClassifier: shapes for every cell x direction x readout, and what each readout reads."""

import pytest
import torch

from dist_rnn.model import RNNClassifier


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("readout", ["last", "final", "max"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_output_shape(cell, bidirectional, readout, num_layers):
    model = RNNClassifier(input_size=28, hidden_size=16, num_layers=num_layers, cell=cell,
                          bidirectional=bidirectional, readout=readout)
    logits = model(torch.rand(5, 28, 28))
    assert logits.shape == (5, 10)
    assert model.fc.in_features == 16 * (2 if bidirectional else 1)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unidirectional_readouts_agree(cell):
    """Without a backward direction, out[:, -1] IS the top layer's final hidden state."""
    torch.manual_seed(0)
    model = RNNClassifier(28, 16, 2, cell=cell, readout="last")
    x = torch.rand(4, 28, 28)
    last = model(x)
    model.readout = "final"
    torch.testing.assert_close(model(x), last)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_bidirectional_last_readout_is_the_flawed_one(num_layers):
    """out[:, -1, H:] is the top backward direction after ONE step; 'final' takes it after all 28. With one
    layer that step has read the last row only; with two, its input at that step already holds the first
    layer's forward state, which has read every row."""
    torch.manual_seed(0)
    model = RNNClassifier(28, 16, num_layers, bidirectional=True, readout="final")
    x = torch.rand(3, 28, 28)
    out, (h_n, _) = model.rnn(x)
    torch.testing.assert_close(out[:, -1, :16], h_n[-2])  # forward half: the same in both readouts
    torch.testing.assert_close(out[:, 0, 16:], h_n[-1])   # backward final state sits at t = 0
    assert not torch.allclose(out[:, -1, 16:], h_n[-1])   # ...not at t = -1
    x2 = x.clone()
    x2[:, 26] += 1  # the second-to-last row
    out2, _ = model.rnn(x2)
    sees_row_26 = not torch.allclose(out2[:, -1, 16:], out[:, -1, 16:])
    assert sees_row_26 == (num_layers > 1)


def test_max_readout_of_a_packed_batch_reads_each_sequence_alone():
    """Packed, each sequence is pooled over its own steps only: the same features as running it alone."""
    torch.manual_seed(0)
    model = RNNClassifier(3, 8, 2, bidirectional=True, readout="max").eval()
    lengths = [7, 4, 2]
    x = torch.randn(3, 7, 3)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True)
    alone = torch.cat([model.features(x[i:i + 1, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(model.features(packed), alone)
    out, _ = model.rnn(x[1:2, :4])
    torch.testing.assert_close(alone[1], out[0].amax(0))


def test_bad_readout_rejected():
    with pytest.raises(ValueError):
        RNNClassifier(28, readout="middle")


def test_head_dropout_acts_on_the_readout_in_training_only():
    torch.manual_seed(0)
    model = RNNClassifier(28, 16, 1, head_dropout=0.5)
    x = torch.rand(4, 28, 28)
    features = model.features(x)
    assert features.shape == (4, 16)
    model.eval()
    torch.testing.assert_close(model(x), model.fc(features))  # eval: no dropout
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))  # training: a fresh mask each call
