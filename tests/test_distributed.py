"""Real torchrun runs on CPU with gloo: DDP training, same trajectory as one process, exact evaluation,
the launch/ scripts (one node, and two "nodes" meeting through a c10d rendezvous on loopback)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TORCHRUN, check_ok, events, free_port, read_results, run_module, run_train, write_mnist
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import dist_rnn
from dist_rnn import plot
from dist_rnn.checkpoint import load_checkpoint
from dist_rnn.cli import as_flags
from dist_rnn.data.idx import load_split
from dist_rnn.distributed import resolve_device, threads_per_rank
from dist_rnn.errors import UserError


@pytest.fixture(scope="module")
def big_mnist(tmp_path_factory) -> Path:
    """5000 training images: 50 global batches of 100, one epoch."""
    return write_mnist(tmp_path_factory.mktemp("data"), n_train=5000, n_test=1001)


def test_torchrun_two_processes(mnist_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_train(["--data-dir", str(mnist_dir), "--out-dir", str(out), "--epochs", "2",
                      "--log-every", "3", "--hidden-size", "32"], nproc=2)
    check_ok(proc)
    results = read_results(out)
    assert results["world_size"] == 2 and results["test_samples"] == 130 and results["steps"] == 12
    assert "2 process(es)" in proc.stdout and "(50 per process)" in proc.stdout
    # torchrun exported OMP_NUM_THREADS=1; each rank takes its share of the cores instead
    assert f"({max(1, len(os.sched_getaffinity(0)) // 2)} CPU threads each)" in proc.stdout
    # only global rank 0 prints: each line once
    assert proc.stdout.count("Epoch [1/2], Step [3/6]") == 1
    assert proc.stdout.count("Epoch [2/2] test accuracy") == 1
    checkpoint = load_checkpoint(results["checkpoint"])
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "results.json"]


def test_threads_per_rank_policy():
    cores = len(os.sched_getaffinity(0))
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2"}
    assert threads_per_rank(3, {"OMP_NUM_THREADS": "5"}) == 3  # --threads wins
    assert threads_per_rank(0, {"OMP_NUM_THREADS": "5"}) == 5  # then the user's OMP_NUM_THREADS
    assert threads_per_rank(0, {}) == cores  # one process: every core
    assert threads_per_rank(0, {**torchrun, "OMP_NUM_THREADS": "1"}) == max(1, cores // 2)  # torchrun's default
    assert threads_per_rank(0, {**torchrun, "OMP_NUM_THREADS": "3"}) == 3
    assert threads_per_rank(0, {"LOCAL_WORLD_SIZE": str(4 * cores)}) == 1


def final_weights(out: Path) -> dict:
    return load_checkpoint(read_results(out)["checkpoint"])["model"]


def losses(out: Path) -> list:
    return [e["loss"] for e in events(out, "train")]


@pytest.mark.parametrize("optimizer,lr,steps,tolerance", [("sgd", "0.1", 50, 1e-5), ("adamw", "0.003", 10, 1e-4)])
def test_same_trajectory_at_any_world_size(big_mnist, tmp_path, optimizer, lr, steps, tolerance):
    """Same seed and global batch: 2 processes follow the 1-process trajectory up to float rounding
    (AdamW with weight decay and balanced class weights too: each rank's loss is a mean over its part)."""
    args = ["--data-dir", str(big_mnist), "--optimizer", optimizer, "--lr", lr, "--max-steps", str(steps),
            "--log-every", "5", "--hidden-size", "64"]
    if optimizer == "adamw":
        args += ["--weight-decay", "0.01", "--class-weights", "balanced"]
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "one")]))
    check_ok(run_train([*args, "--out-dir", str(tmp_path / "two")], nproc=2, launcher="fork"))
    assert read_results(tmp_path / "two")["world_size"] == 2
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    assert worst < tolerance, f"max parameter difference {worst:.3g}"
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), abs=1e-4)
    assert losses(tmp_path / "one")[0] != pytest.approx(losses(tmp_path / "one")[-1], abs=1e-3)  # it trained


def test_same_trajectory_whatever_the_split_between_grad_accum_and_processes(big_mnist, tmp_path):
    """Global batch 96 as 1 process x 4 micro-batches, 2 processes x 2 and 4 processes x 1 (24
    samples each time): one trajectory up to float rounding, with dropout between the layers kept
    out (its masks depend on how a batch is cut)."""
    args = ["--data-dir", str(big_mnist), "--optimizer", "sgd", "--lr", "0.1", "--batch-size", "96",
            "--max-steps", "20", "--log-every", "5", "--hidden-size", "32", "--eval-batch-size", "256"]
    runs = {}
    for nproc, accumulate in ((None, 4), (2, 2), (4, 1)):
        out = tmp_path / f"{nproc}x{accumulate}"
        proc = run_train([*args, "--out-dir", str(out), "--grad-accum", str(accumulate)], nproc=nproc,
                         launcher="fork")
        check_ok(proc)
        assert read_results(out)["world_size"] == (nproc or 1)
        if nproc is None:
            assert "global batch 96 (96 per process in 4 micro-batches)" in proc.stdout
        runs[(nproc, accumulate)] = out
    reference = final_weights(runs[(None, 4)])
    for key, out in runs.items():
        weights = final_weights(out)
        worst = max((reference[k] - weights[k]).abs().max().item() for k in reference)
        assert worst < 1e-5, (key, worst)
        assert losses(out) == pytest.approx(losses(runs[(None, 4)]), abs=1e-5)
    assert losses(runs[(4, 1)])[0] != pytest.approx(losses(runs[(4, 1)])[-1], abs=1e-3)  # it trained


def test_exact_evaluation_counts(big_mnist, tmp_path):
    """1001 test samples are each scored once at world sizes 1, 2 and 3 (1001 divides by neither):
    training's own count, and evaluate's confusion matrix and per-class metrics against a count made
    here from the Python API's predictions, and scikit-learn's metrics of it."""
    correct = {}
    for nproc in (None, 2, 3):
        out = tmp_path / f"w{nproc}"
        # --max-steps 0 scores the initial model, identical at every world size (same seed)
        check_ok(run_train(["--data-dir", str(big_mnist), "--out-dir", str(out), "--max-steps", "0",
                            "--batch-size", "6", "--eval-batch-size", "64"], nproc=nproc, launcher="fork"))
        results = read_results(out)
        assert results["test_samples"] == 1001 and results["world_size"] == (nproc or 1)
        assert sum(map(sum, results["test_confusion"])) == 1001 and len(results["test_per_class"]["classes"]) == 10
        correct[nproc] = round(results["test_accuracy"] * 1001)
    assert len(set(correct.values())) == 1, correct

    trained = tmp_path / "trained"
    check_ok(run_train(["--data-dir", str(big_mnist), "--out-dir", str(trained), "--max-steps", "30",
                        "--hidden-size", "16", "--save-every", "10"]))
    checkpoint = read_results(trained)["checkpoint"]
    test = load_split(big_mnist, "test")
    truth = test.labels.numpy()
    predicted = dist_rnn.load(checkpoint, verbose=False).predict(test.images.numpy())  # one process, unsharded
    here = confusion_matrix(truth, predicted, labels=range(10))
    assert 0.2 < np.trace(here) / len(truth) < 1  # some right, some wrong: the matrix has something to count
    for nproc in (None, 3):
        scored = tmp_path / f"scored-{nproc}.json"
        check_ok(run_module("dist_rnn.evaluate", ["--checkpoint", checkpoint, "--data-dir", str(big_mnist),
                                                  "--batch-size", "64", "--out", str(scored)], nproc=nproc))
        result = json.loads(scored.read_text())
        assert result["world_size"] == (nproc or 1) and result["test_confusion"] == here.tolist()
        precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=range(10),
                                                                         zero_division=0)
        rows = result["test_per_class"]["classes"]
        np.testing.assert_allclose([rows[str(k)]["f1"] for k in range(10)], f1, rtol=1e-12)
        np.testing.assert_allclose([rows[str(k)]["precision"] for k in range(10)], precision, rtol=1e-12)
        np.testing.assert_allclose([rows[str(k)]["recall"] for k in range(10)], recall, rtol=1e-12)
        assert [rows[str(k)]["support"] for k in range(10)] == support.tolist()

    # An ensemble: the mean of its models' probabilities, in evaluate and in predict.
    earlier = str(trained / "checkpoints" / "step-10.pt")
    mean = sum(dist_rnn.load(p, verbose=False).predict_proba(test.images.numpy()) for p in (checkpoint, earlier)) / 2
    scored = tmp_path / "ensemble.json"
    check_ok(run_module("dist_rnn.evaluate", ["--checkpoint", checkpoint, "--checkpoint", earlier, "--data-dir", str(big_mnist),
                                              "--out", str(scored), "--predictions", str(tmp_path / "p.csv")]))
    result = json.loads(scored.read_text())
    assert result["test_confusion"] == confusion_matrix(truth, mean.argmax(1), labels=range(10)).tolist()
    assert result["checkpoint"] == [checkpoint, earlier]
    assert plot.main([str(scored), "--confusion", str(tmp_path / "confusion.png")]) == 0  # drawn from the JSON
    assert Image.open(tmp_path / "confusion.png").size[0] > 500
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "index,true,predicted,probability" and len(rows) == 1002
    assert rows[1] == f"0,{truth[0]},{mean[0].argmax()},{mean[0].max():.6f}"
    Image.fromarray(test.images[0].numpy()).save(tmp_path / "digit.png")
    answers = []
    for paths in ([checkpoint], [earlier], [checkpoint, earlier]):
        proc = run_module("dist_rnn.predict", [*(f"--checkpoint={p}" for p in paths), "--json",
                                               str(tmp_path / "digit.png")])
        check_ok(proc)
        answers.append(json.loads(proc.stdout)[0])
    for digit in map(str, range(10)):
        assert answers[2]["probabilities"][digit] == pytest.approx(
            (answers[0]["probabilities"][digit] + answers[1]["probabilities"][digit]) / 2, abs=2e-6)


def printed_lines(proc, start: str) -> list[str]:
    """The output lines that begin with `start` (torchrun's report quotes them again, indented)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(start)]


def test_error_under_torchrun_is_printed_once(tmp_path):
    """Once by the workers (local rank 0), and named again by torchrun's report as the cause."""
    proc = run_train(["--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "run")], nproc=2)
    assert proc.returncode != 0
    lines = printed_lines(proc, "python -m dist_rnn.train: error:")
    assert len(lines) == 1 and "train-images-idx3-ubyte: missing" in lines[0]
    assert f"traceback : {lines[0]}" in proc.stderr


def test_usage_error_under_torchrun_is_printed_once(tmp_path):
    """argparse's errors used to be printed by every process; now one line per node."""
    proc = run_train(["--hiden-size", "3", "--out-dir", str(tmp_path / "run")], nproc=2)
    assert proc.returncode != 0
    assert len(printed_lines(proc, "python -m dist_rnn.train: error: unrecognized arguments: --hiden-size")) == 1


def test_device_and_backend_choice():
    """--device / --backend: the same answer on every rank of a node; NCCL refuses more processes
    than GPUs in one line that says what to do; gloo shares GPUs (local rank modulo the count)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_device("auto", "auto", 0, 1, cuda_devices=0) == (cpu, "gloo")
    assert resolve_device("auto", "auto", 0, 1, cuda_devices=1) == (cuda, "nccl")
    assert resolve_device("cuda", "gloo", 1, 2, cuda_devices=1) == (cuda, "gloo")
    assert resolve_device("cuda", "gloo", 3, 4, cuda_devices=2) == (torch.device("cuda", 1), "gloo")
    assert resolve_device("auto", "auto", 1, 2, cuda_devices=2) == (torch.device("cuda", 1), "nccl")
    refusal = ("torchrun started 2 processes on this node but it has 1 GPU: use --nproc_per_node 1, "
               "or --backend gloo to share GPUs while debugging")  # as the command line words it
    for local_rank in (0, 1):  # rank 0 refuses too, so the line is printed (by local rank 0)
        with pytest.raises(UserError) as e:
            resolve_device("auto", "auto", local_rank, 2, cuda_devices=1)
        assert as_flags(e.value) == refusal
    with pytest.raises(UserError, match="backend=nccl needs CUDA devices"):
        resolve_device("cpu", "nccl", 0, 1, cuda_devices=1)
    with pytest.raises(UserError, match="no CUDA device is available"):
        resolve_device("cuda", "auto", 0, 1, cuda_devices=0)


def test_error_only_one_node_meets_is_printed_by_every_node(mnist_dir, tmp_path):
    """Two torchrun 'nodes' on loopback; only the second one's --data-dir is wrong. Every rank stops
    with that node's error, naming its rank, and each node prints it once (before, only rank 0
    printed errors, and rank 0 had its files: the failing node said nothing)."""
    common = ["--out-dir", str(tmp_path / "run"), "--max-steps", "3", "--device", "cpu"]
    env = {"NNODES": "2", "NPROC": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RUN_ID": "bad-node", "OMP_NUM_THREADS": "1", "MAX_RESTARTS": "0"}
    good = run_script("multi_node.sh", ["--data-dir", str(mnist_dir), *common], env)
    bad = run_script("multi_node.sh", ["--data-dir", str(tmp_path / "nowhere"), *common], env)
    outputs = [node.communicate(timeout=300)[0] for node in (good, bad)]
    assert good.returncode != 0 and bad.returncode != 0
    lines = [[line for line in o.splitlines() if line.startswith("python -m dist_rnn.train: error: ")
              and "nowhere/train-images-idx3-ubyte: missing" in line] for o in outputs]
    assert [len(found) for found in lines] == [1, 1], outputs
    good_line, bad_line = lines[0][0], lines[1][0]
    # The rendezvous gives the bad node rank 1 (both lines name it) or rank 0 (its own line is plain,
    # the other node's says "rank 0").
    assert (good_line == bad_line and "error: rank 1: " in bad_line) or \
        ("error: rank" not in bad_line and "error: rank 0: " in good_line), lines
    assert "lost the other processes" not in outputs[0]  # the good node was told, not left waiting


def run_script(script: str, args: list, extra_env: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", str(Path(os.sys.executable))), **extra_env}
    return subprocess.Popen(["bash", str(REPO / "launch" / script), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_launch_single_node(mnist_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_script("single_node.sh", ["--data-dir", str(mnist_dir), "--out-dir", str(out), "--max-steps", "3",
                                        "--device", "cpu"], {"NPROC": "2"})
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert read_results(out)["world_size"] == 2


def test_launch_multi_node_on_loopback(mnist_dir, tmp_path):
    """Two torchrun agents, each a 'node' of one process, meet through the c10d rendezvous."""
    out = tmp_path / "run"
    env = {"NNODES": "2", "NPROC": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "RUN_ID": "test", "OMP_NUM_THREADS": "1"}  # two 'nodes' share this machine's cores
    args = ["--data-dir", str(mnist_dir), "--out-dir", str(out), "--max-steps", "3", "--device", "cpu"]
    nodes = [run_script("multi_node.sh", args, env) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    results = read_results(out)
    assert results["world_size"] == 2 and results["steps"] == 3 and results["test_samples"] == 130
    assert sum(o.count("test accuracy") for o in outputs) == 2  # epoch line + final line, rank 0 only


def test_an_exception_on_rank_0_reaches_the_others_as_itself(tmp_path):
    """on_main: a bug on rank 0 (not only bad input) reaches rank 1 with its type and message, so
    rank 1 reports it instead of a lost peer; a UserError arrives naming rank 0."""
    script = tmp_path / "relay.py"
    script.write_text(
        "import sys\n"
        "from dist_rnn import distributed\n"
        "from dist_rnn.errors import UserError\n"
        "def boom(kind):\n"
        "    raise ValueError('bad value 7') if kind == 'bug' else UserError('no such file')\n"
        "with distributed.process_group('cpu') as env:\n"
        "    for kind in ('bug', 'user'):\n"
        "        try:\n"
        "            distributed.on_main(env, lambda: boom(kind))\n"
        "        except Exception as e:\n"
        "            with open(sys.argv[1] + f'/rank-{env.rank}.txt', 'a') as fh:  # one file each: no interleaving\n"
        "                fh.write(f'rank {env.rank} {kind}: {type(e).__name__}: {e}\\n')\n")
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    check_ok(proc)
    lines = [line for rank in (0, 1) for line in (tmp_path / f"rank-{rank}.txt").read_text().splitlines()]
    assert lines == ["rank 0 bug: ValueError: bad value 7", "rank 0 user: UserError: no such file",
                     "rank 1 bug: ValueError: bad value 7", "rank 1 user: UserError: rank 0: no such file"], proc.stdout
