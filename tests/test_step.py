"""The training step: the graphed step's logic equals the eager step's, the loss is read only at
--log-every (the mean since the last report), and --cuda-graphs on falls back on CPU in one line."""

import numpy as np
import pytest
import torch
from conftest import check_ok, events, run_step_worker, run_train, write_mnist

from dist_rnn.train import keep_optimizer_mode


@pytest.mark.parametrize("nproc,optimizer", [(None, "adam"), (2, "adam"), (2, "sgd")])
def test_graphed_step_logic_is_the_eager_step(tmp_path, nproc, optimizer):
    """Static buffers, one flat gradient buffer, three warm-up steps undone, and (2 ranks) the
    rank-ordered gradient mean between the phases: bitwise the eager DDP step, 25 steps on."""
    data = write_mnist(tmp_path / "data", n_train=500, n_test=10)
    found = run_step_worker(data, tmp_path / "out.json", optimizer, nproc)
    assert found["world_size"] == (nproc or 1)
    assert found["moved"] > 0.01  # it trained
    assert found["bitwise_equal"] and found["graphed_losses"] == found["eager_losses"], found


def test_a_resumed_optimizer_keeps_this_runs_implementation():
    """load_state_dict brings back the saved run's param-group settings (an eager run's Adam into a
    graphed run's capturable one, say); keep_optimizer_mode puts this run's back."""
    saved_param = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.Adam([saved_param], lr=0.1, foreach=True)
    saved_param.grad = torch.ones(3)
    saved.step()
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([param], lr=0.1, foreach=False)
    optimizer.load_state_dict(saved.state_dict())
    assert optimizer.param_groups[0]["foreach"] is True  # torch keeps the saved setting
    keep_optimizer_mode(optimizer)
    assert optimizer.param_groups[0]["foreach"] is False
    assert optimizer.state[param]["step"].device.type == "cpu" and float(optimizer.state[param]["step"]) == 1


def test_reported_loss_is_the_mean_since_the_last_report(tmp_path):
    """The loss stays on the device until --log-every: a report is the mean of the steps since the
    previous one, so five reports at --log-every 1 average to one at --log-every 5."""
    data = write_mnist(tmp_path / "data", n_train=1000, n_test=50)
    args = ["--data-dir", str(data), "--max-steps", "10", "--hidden-size", "16", "--resume", "none"]
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "every"), "--log-every", "1"]))
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "five"), "--log-every", "5"]))
    every = [e["loss"] for e in events(tmp_path / "every", "train")]
    five = [e["loss"] for e in events(tmp_path / "five", "train")]
    assert len(every) == 10 and len(five) == 2
    for k in range(2):
        assert five[k] == pytest.approx(sum(every[5 * k: 5 * k + 5]) / 5, rel=1e-6)


@pytest.mark.parametrize("nproc", [None, 2])
def test_cuda_graphs_on_falls_back_on_cpu_in_one_line(tmp_path, nproc):
    data = write_mnist(tmp_path / "data", n_train=400, n_test=50)
    proc = run_train(["--data-dir", str(data), "--out-dir", str(tmp_path / "run"), "--max-steps", "3",
                      "--hidden-size", "8", "--cuda-graphs", "on"], nproc=nproc, launcher="fork")
    check_ok(proc)
    assert (proc.stdout + proc.stderr).count("warning: CUDA graphs need a CUDA device: training eagerly") == 1


def test_mse_losses_average_or_sum_the_squared_errors_over_the_classes():
    """'mse' is F.mse_loss's mean over batch and classes; 'mse-sum' sums over the classes (the textbook
    per-sample squared error), 10x the first with 10 classes; cross-entropy is F.cross_entropy."""
    from dist_rnn.step import loss_function

    logits, y = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 9, 1, 1, 2])
    squared = (torch.softmax(logits, 1) - torch.nn.functional.one_hot(y, 10).float()) ** 2
    torch.testing.assert_close(loss_function(logits, y, "mse"), squared.mean())
    torch.testing.assert_close(loss_function(logits, y, "mse-sum"), squared.sum(1).mean())
    torch.testing.assert_close(loss_function(logits, y, "ce"), torch.nn.functional.cross_entropy(logits, y))
    weight = torch.rand(logits.shape[1])
    per_sample = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(loss_function(logits, y, "ce", weight), (per_sample * weight[y]).mean())


def test_balanced_class_weights_follow_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    from dist_rnn.config import TrainConfig
    from dist_rnn.train import class_weights
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 0])
    weight = class_weights(TrainConfig(class_weights="balanced"), labels, 4, torch.device("cpu"))
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=labels.numpy())
    torch.testing.assert_close(weight[:3], torch.tensor(expected, dtype=torch.float32))
    assert weight[3] == 0  # a class the training split lacks
    assert class_weights(TrainConfig(), labels, 4, torch.device("cpu")) is None


def test_class_weights_reach_the_training_step(tmp_path):
    """On 36 cases of one class and 4 of another, balanced weights change the first step's loss."""
    import dist_rnn
    from dist_rnn import SequenceDataset
    from dist_rnn.config import TrainConfig
    x = [np.random.default_rng(i).normal(size=(5, 2)).astype(np.float32) for i in range(40)]
    data = SequenceDataset(x, ["a"] * 36 + ["b"] * 4)
    first = {}
    for weights in ("none", "balanced"):
        result = dist_rnn.fit(TrainConfig(out_dir=str(tmp_path / weights), hidden_size=4, num_layers=1, batch_size=40,
                                          max_steps=1, log_every=1, class_weights=weights, device="cpu"), train=data)
        first[weights] = next(e["loss"] for e in result.history if e["event"] == "train")
    assert first["balanced"] != pytest.approx(first["none"], rel=1e-3), first
