"""Suite `theory`: the update equations of the three cells, their parameter counts as formulas checked
against PyTorch's modules, and the state shapes `batch_first` does not change."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from experiments.lab import Lab, Report

GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer and direction
MODULES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
SHAPES = [(28, 128, 1, False), (28, 128, 2, False), (28, 128, 2, True), (1, 64, 1, False), (28, 149, 2, False)]


def formula(cell: str, inputs: int, hidden: int, layers: int, bidirectional: bool) -> int:
    """g (H I_l + H^2 + 2H) per layer and direction: g weight blocks over the layer's input I_l (the
    image's features for layer 0, the directions' concatenated states above), the recurrent weights,
    and PyTorch's two bias vectors (b_ih and b_hh)."""
    directions = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        layer_inputs = inputs if layer == 0 else hidden * directions
        total += directions * GATES[cell] * (hidden * layer_inputs + hidden * hidden + 2 * hidden)
    return total


def parameter_formulas(seed: int) -> dict[str, Any]:
    """The formula against the parameters of nn.RNN / nn.GRU / nn.LSTM, for a few shapes."""
    rows = []
    for cell in GATES:
        for inputs, hidden, layers, bidirectional in SHAPES:
            module = MODULES[cell](inputs, hidden, layers, bidirectional=bidirectional)
            rows.append({"cell": cell, "inputs": inputs, "hidden": hidden, "layers": layers,
                         "bidirectional": bidirectional, "formula": formula(cell, inputs, hidden, layers, bidirectional),
                         "module": sum(p.numel() for p in module.parameters())})
    return {"rows": rows}


def batch_first_states(seed: int) -> dict[str, Any]:
    """Shapes in and out of nn.LSTM(28, 128, num_layers=2, batch_first=True) on a batch of 100: the
    input and output are batch-major, h0/c0 and h_n/c_n stay (layers x directions, batch, hidden)."""
    torch.manual_seed(seed)
    lstm = nn.LSTM(28, 128, num_layers=2, batch_first=True)
    x = torch.rand(100, 28, 28)
    out, (h_n, c_n) = lstm(x, (torch.zeros(2, 100, 128), torch.zeros(2, 100, 128)))
    try:  # the states laid out batch-major, as batch_first might suggest
        lstm(x, (torch.zeros(100, 2, 128), torch.zeros(100, 2, 128)))
        batch_major_states = "accepted"
    except RuntimeError as e:
        batch_major_states = str(e).strip().splitlines()[0]
    return {"input": list(x.shape), "output": list(out.shape), "h_n": list(h_n.shape), "c_n": list(c_n.shape),
            "batch_major_states": batch_major_states,
            "last_output_is_top_h_n": bool(torch.equal(out[:, -1, :], h_n[-1]))}


def suite(lab: Lab, report: Report) -> None:
    formulas = lab.measure("theory", "parameter-formulas", 0, parameter_formulas)
    states = lab.measure("theory", "batch-first-states", 0, batch_first_states)
    if not (formulas and states):
        return report.missing("theory")
    rows = formulas["values"]["rows"]
    report.section(
        "theory", states=states["values"], all_match=all(r["formula"] == r["module"] for r in rows),
        formulas_table=report.table(
            ["cell", "I", "H", "layers", "bidirectional", "formula", "`nn` module", "equal"],
            [[r["cell"], r["inputs"], r["hidden"], r["layers"], r["bidirectional"], f"{r['formula']:,}",
              f"{r['module']:,}", r["formula"] == r["module"]] for r in rows]))
