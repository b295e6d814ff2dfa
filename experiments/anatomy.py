"""Suite `anatomy`: nn.LSTM's parameters, and its forward written out by hand."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from experiments.lab import Lab, Report, missing


def lstm_anatomy(seed: int) -> dict[str, Any]:
    """nn.LSTM(28, 128, num_layers=2)'s parameters, and its forward written out by hand from them."""
    torch.manual_seed(seed)
    lstm = nn.LSTM(28, 128, num_layers=2, batch_first=True)
    shapes = [[name, list(p.shape), p.numel()] for name, p in lstm.named_parameters()]
    x = torch.rand(4, 28, 28)
    with torch.no_grad():
        layer_input = x
        for layer in range(2):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            h = c = torch.zeros(len(x), 128)
            outputs = []
            for t in range(layer_input.shape[1]):  # one time step (one row of the image) at a time
                i, f, g, o = (layer_input[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=1)  # PyTorch's gate order
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # forget some, write some
                h = torch.sigmoid(o) * torch.tanh(c)  # expose some
                outputs.append(h)
            layer_input = torch.stack(outputs, dim=1)  # the next layer reads this layer's outputs
        library = lstm(x)[0]
    return {"parameters": shapes, "total": sum(n for _, _, n in shapes),
            "max_diff_by_hand_vs_library": float((layer_input - library).abs().max())}


def suite(lab: Lab, report: Report) -> None:
    report.add("## What are `nn.LSTM`'s parameters, and how is its forward written?")
    record = lab.measure("anatomy", "lstm-anatomy", 0, lstm_anatomy)
    if not record:
        return missing(report, "anatomy")
    v = record["values"]
    report.add("`nn.LSTM(28, 128, num_layers=2)`, the presets' recurrent part: `input_size=28` pixels per step, "
               "`hidden_size=128` units, two stacked layers. Its parameters:")
    report.table(["parameter", "shape", "count"], [[f"`{name}`", "x".join(map(str, shape)), n]
                                                   for name, shape, n in v["parameters"]] + [["total", "", v["total"]]])
    report.add(
        "Each weight matrix stacks four blocks of 128 rows, in PyTorch's order: input gate `i`, forget gate `f`, "
        "candidate `g`, output gate `o`; `weight_ih` reads the step's input, `weight_hh` the previous hidden state, "
        "and the two biases are simply added. The forward pass, written out from those parameters "
        "(`experiments.anatomy.lstm_anatomy`):\n\n"
        "```python\n"
        "for t in range(28):                      # one row of the image per step\n"
        "    i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b_ih + b_hh).chunk(4, dim=1)\n"
        "    c = sigmoid(f) * c + sigmoid(i) * tanh(g)   # forget some of the cell, write some\n"
        "    h = sigmoid(o) * tanh(c)                    # expose some of it\n"
        "    outputs.append(h)                           # the next layer reads these\n"
        "```")
    report.add(
        f"**Answer.** The {v['total']:,} parameters are two sets of four gate matrices per layer; the loop above, run "
        f"for both layers, reproduces `nn.LSTM`'s output to within {v['max_diff_by_hand_vs_library']:.1e}. "
        "The classifier then reads one vector per image (dist_rnn's `RNNClassifier.features`: the last step's "
        "output, or each direction's final state) into a `Linear(128, 10)`.")
