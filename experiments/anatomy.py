"""Suite `anatomy`: nn.LSTM's parameters, and its forward written out by hand."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from experiments.lab import Lab, Report


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
    record = lab.measure("anatomy", "lstm-anatomy", 0, lstm_anatomy)
    if not record:
        return report.missing("anatomy")
    v = record["values"]
    rows = [[f"`{name}`", "x".join(map(str, shape)), n] for name, shape, n in v["parameters"]]
    report.section("anatomy", total=v["total"], max_diff=v["max_diff_by_hand_vs_library"],
                   parameter_table=report.table(["parameter", "shape", "count"], rows + [["total", "", v["total"]]]))
