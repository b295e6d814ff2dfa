"""dist_rnn from Python: fit, load, Classifier (predict, export), in-process wherever a subprocess
adds nothing; torchrun and a process without dist_rnn where they are what is tested."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import fit_worker
import numpy as np
import pytest
import torch
from conftest import REPO, TORCHRUN, check_ok, synthetic_series, write_mnist
from fit_worker import series

import dist_rnn
from dist_rnn import SequenceDataset, TrainConfig, UserError
from dist_rnn.checkpoint import load_checkpoint


def small(out_dir, **options) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 20, "hidden_size": 16, "lr": 0.01, "log_every": 5,
                          "out_dir": str(out_dir), **options})


def test_fit_load_predict_on_arrays_of_unequal_lengths_and_string_labels(tmp_path):
    """Fit on a list of arrays with a held-out validation split, load the run directory (its best
    weights), predict labels as given; a second fit in the same process, on a plain list of
    (sequence, label) pairs, works too and leaves the process as it found it."""
    (train_x, train_y), (test_x, test_y) = series(200, 1), series(61, 2)
    handlers, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    result = dist_rnn.fit(small(tmp_path / "a", val_size=40, epochs=3), train=SequenceDataset(train_x, train_y),
                          test=SequenceDataset(test_x, test_y))
    assert result.results["steps"] == 3 * 8 and result.best_checkpoint == tmp_path / "a" / "checkpoints" / "best.pt"
    assert result.test_accuracy > 0.6 and result.best_val_accuracy >= result.val_accuracy
    assert [e["event"] for e in result.history].count("eval") == 3

    model = dist_rnn.load(tmp_path / "a")
    assert model.checkpoint == result.best_checkpoint and list(model.classes_) == ["high", "low", "mid"]
    proba = model.predict_proba(test_x)
    assert proba.shape == (61, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    predicted = model.predict(test_x)
    assert (predicted == np.array(test_y)).mean() == pytest.approx(result.best_test_accuracy)
    assert np.abs(model.predict_proba(test_x[:7]) - proba[:7]).max() < 1e-6  # a batch alone: the same answers

    rng, done = torch.get_rng_state(), []  # again, from another thread (no signal handlers can be set there)
    thread = threading.Thread(target=lambda: done.append(
        dist_rnn.fit(small(tmp_path / "b", epochs=1), train=list(zip(train_x, train_y)))))
    thread.start()
    thread.join()
    again = done[0]
    assert again.test_accuracy is None and again.results["steps"] == 10 and torch.equal(torch.get_rng_state(), rng)
    assert signal.getsignal(signal.SIGTERM) == handlers and torch.get_num_threads() == threads
    assert not torch.distributed.is_initialized()


def test_bad_input_raises_user_error_not_system_exit(tmp_path):
    with pytest.raises(UserError, match="batch_size must be >= 1"):
        dist_rnn.fit(small(tmp_path / "a", batch_size=0))
    with pytest.raises(UserError, match="option 'epochs' must be int, got float 1.5"):
        dist_rnn.fit(small(tmp_path / "a", epochs=1.5))
    with pytest.raises(UserError, match="unknown preset"):
        TrainConfig.preset("seed-gru")
    with pytest.raises(UserError, match=r"y: an array of shape \(2, 3\): expected one label per sequence"):
        SequenceDataset([np.zeros((4, 2)), np.zeros((5, 2))], np.eye(3)[:2])
    with pytest.raises(UserError, match="y: a label of type tuple"):
        SequenceDataset([np.zeros((4, 2)), np.zeros((5, 2))], [(1, 2), (3, 4)])
    with pytest.raises(UserError, match="device=gpu: choose auto, cpu or cuda"):
        dist_rnn.load(tmp_path / "missing.pt", device="gpu")
    with pytest.raises(UserError, match=r"y: 3 labels for 2 sequences"):
        SequenceDataset([np.zeros((4, 2)), np.zeros((5, 2))], ["a", "b", "c"])
    with pytest.raises(UserError, match="different numbers of channels"):
        SequenceDataset([np.zeros((4, 2)), np.zeros((5, 3))], ["a", "b"])
    with pytest.raises(UserError, match="labels the training data does not have: z"):
        dist_rnn.fit(small(tmp_path / "b"), train=SequenceDataset(*series(40, 1)),
                     test=SequenceDataset([np.zeros((4, 2))], ["z"]))
    with pytest.raises(UserError, match="no such checkpoint file"):
        dist_rnn.load(tmp_path / "missing.pt")
    assert not (tmp_path / "b" / "checkpoints").exists()  # refused before anything was written


def test_preset_is_the_commands_preset():
    c = TrainConfig.preset("seed-bilstm", epochs=5)
    assert (c.preset, c.epochs, c.lr, c.bidirectional, c.readout, c.batch_size) == ("seed-bilstm", 5, 0.003, True,
                                                                                   "last", 100)
    assert TrainConfig().preset is None
    assert TrainConfig.preset("seed-lstm", name="exp1").name == "exp1"


def test_export_runs_where_dist_rnn_cannot_be_imported(tmp_path):
    """The exported files, loaded by plain torch in a process where `import dist_rnn` fails, give
    predict_proba's probabilities for a padded batch and its lengths, read step by step or in patches
    (the latter with the max-pooled readout)."""
    (train_x, train_y), (test_x, _) = series(100, 1), series(23, 2)
    models = {}
    for patch, readout in (("1", "last"), ("3", "max")):
        # readouts "last" (the presets') and "max" on packed sequences: the trace must not keep the example's
        # batch size or length
        result = dist_rnn.fit(small(tmp_path / f"run-{patch}", epochs=1, bidirectional=True, readout=readout,
                                    patch=patch), train=SequenceDataset(train_x, train_y))
        models[patch] = dist_rnn.load(result.checkpoint)
        models[patch].export(tmp_path / f"model-{patch}.pt")
    lengths = np.array([len(s) for s in test_x])
    padded = np.zeros((len(test_x), lengths.max(), 2), dtype=np.float32)
    for i, s in enumerate(test_x):
        padded[i, :len(s)] = s
    np.save(tmp_path / "x.npy", padded)
    np.save(tmp_path / "lengths.npy", lengths)
    script = ("import sys, numpy as np, torch\n"
              "sys.modules['dist_rnn'] = None  # as if it were not installed\n"
              "try:\n    import dist_rnn\nexcept ImportError:\n    pass\nelse:\n    sys.exit('dist_rnn imported')\n"
              "x, lengths = torch.from_numpy(np.load('x.npy')), torch.from_numpy(np.load('lengths.npy'))\n"
              "for patch in ('1', '3'):\n"
              "    m = torch.jit.load(f'model-{patch}.pt')\n"
              "    p = [m(x[i:i + n], lengths[i:i + n]).detach() for i, n in ((0, 1), (1, 5), (6, 17))]\n"
              "    np.save(f'p-{patch}.npy', torch.cat(p).numpy())\n")
    check_ok(subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}))
    for patch, model in models.items():
        assert np.abs(np.load(tmp_path / f"p-{patch}.npy") - model.predict_proba(test_x)).max() < 1e-6, patch
    assert models["3"].module.rnn.input_size == 6  # 3 steps of 2 channels


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")  # (the file is TorchScript)
def test_image_model_predicts_and_exports(tmp_path):
    """An MNIST model (permuted pixels: the saved order matters) from Python: predict on uint8 images,
    and the exported file gives the same probabilities for another batch size."""
    data = write_mnist(tmp_path / "data", n_train=200, n_test=50)
    result = dist_rnn.fit(small(tmp_path / "run", data_dir=str(data), sequence="permuted", max_steps=3))
    model = dist_rnn.load(result.checkpoint)
    from dist_rnn.data import load_split
    test = load_split(data, "test")
    images = test.images.numpy()
    predicted = model.predict(images)
    assert predicted.dtype.kind == "i" and (predicted == test.labels.numpy()).mean() == pytest.approx(
        result.test_accuracy)
    model.export(tmp_path / "model.pt")
    exported = torch.jit.load(str(tmp_path / "model.pt"))
    assert (exported(torch.from_numpy(images[:7])) - torch.from_numpy(model.predict_proba(images[:7]))).abs().max() < 1e-6
    with pytest.raises(UserError, match=r"this model reads uint8 images \(n, 28, 28\)"):
        model.predict(images.astype(np.float32))


def test_torchrun_script_follows_the_one_process_trajectory(tmp_path):
    """A user's script under `torchrun --nproc_per_node=2` follows the same script's one-process
    run (here, in-process) with the same global batch: the same final weights up to float
    rounding, and the same test accuracy; its second fit() in the same processes too."""
    one = fit_worker.main(str(tmp_path / "one"))
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", str(REPO / "tests" / "fit_worker.py"),
                           str(tmp_path / "two")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    check_ok(proc)
    two = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0's line
    assert one.results["world_size"] == 1 and two["world_size"] == 2
    assert one.test_accuracy == two["test_accuracy"] == two["again"] > 0.5
    weights = {n: load_checkpoint(tmp_path / n / "checkpoints" / "step-20.pt")["model"] for n in ("one", "two")}
    worst = max((weights["one"][k] - weights["two"][k]).abs().max().item() for k in weights["one"])
    assert worst < 1e-4, f"max parameter difference {worst:.3g}"


def test_sequence_dataset_layouts_agree():
    """A (n, T, C) array, a list of its rows and a 2-D (n, T) one-channel array are the same data."""
    sequences, labels = synthetic_series(6, 0, variable=False)
    array = np.stack(sequences)
    a, b = SequenceDataset(array, labels), SequenceDataset(list(array), labels)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences)) and a.classes == ["high", "low", "mid"]
    one = SequenceDataset(array[:, :, 0], (np.arange(6) % 2)[:, None])  # a column of labels too
    assert one.sequences[0].shape == (12, 1) and one.classes == [0, 1] and isinstance(one.classes[0], int)
