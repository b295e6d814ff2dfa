"""GPU tests (marker `cuda`, skipped where torch sees no GPU, as in CI): the presets on CUDA in fp32,
bf16 and fp16, evaluation, checkpoints crossing between GPU and CPU, SIGTERM and resume on a GPU,
two ranks sharing one GPU through gloo, NCCL's one-GPU-per-process refusal, bitwise resume with
--deterministic, and the training step in CUDA graphs against the eager one. tools/gpu-check.sh
runs them on a GPU machine."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO,
    check_ok,
    events,
    read_results,
    real_mnist_dir,
    run_step_worker,
    run_train,
    signal_when_training,
    write_mnist,
)

from dist_rnn.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """5000 training images: 50 steps per epoch at batch 100."""
    return write_mnist(tmp_path_factory.mktemp("data"), n_train=5000, n_test=1001)


def train(data: Path, out: Path, steps: int, device: str = "cuda", nproc=None, extra=()) -> dict:
    check_ok(run_train(["--data-dir", str(data), "--out-dir", str(out), "--max-steps", str(steps),
                        "--hidden-size", "48", "--log-every", "5", "--save-every", "10", *extra],
                       nproc=nproc, device=device))
    return read_results(out)


def score(checkpoint: str, device: str, tmp_path: Path, *extra: str) -> dict:
    """`python -m dist_rnn.evaluate` of a checkpoint on `device`."""
    out = tmp_path / f"scored-{device}-{time.monotonic_ns()}.json"
    check_ok(subprocess.run([sys.executable, "-m", "dist_rnn.evaluate", "--checkpoint", checkpoint, "--device", device,
                             "--out", str(out), *extra], cwd=REPO, capture_output=True, text=True, timeout=300))
    return json.loads(out.read_text())


def weights(results: dict) -> dict:
    return load_checkpoint(Path(results["checkpoint"]))["model"]


@pytest.mark.parametrize("preset,precision,floor,graphs", [
    ("seed-lstm", "fp32", 0.96, "off"), ("seed-bilstm", "fp32", 0.97, "off"), ("seed-bilstm", "bf16", 0.97, "off"),
    ("seed-bilstm", "fp16", 0.97, "off"), ("seed-lstm", "fp32", 0.96, "on"), ("seed-bilstm", "fp32", 0.97, "on")])
def test_presets_reach_their_accuracy_on_cuda_and_evaluate_agrees(tmp_path, preset, precision, floor, graphs):
    mnist = real_mnist_dir()
    if mnist is None:
        pytest.skip("real MNIST files not present (set DIST_RNN_DATA)")
    out = tmp_path / "run"
    proc = run_train(["--preset", preset, "--precision", precision, "--data-dir", str(mnist), "--out-dir", str(out),
                      "--cuda-graphs", graphs], device="cuda", timeout=900)
    check_ok(proc)
    assert ("captured in CUDA graphs" in proc.stdout + proc.stderr) == (graphs == "on")
    results = read_results(out)
    assert (results["device"], results["precision"], results["test_samples"]) == ("cuda", precision, 10000)
    assert results["test_accuracy"] >= floor, results
    scored = score(results["checkpoint"], "cuda", tmp_path, "--precision", precision)
    assert scored["test_samples"] == 10000
    assert scored["test_accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-4)  # 1 image at most


def test_fp16_trains_and_its_scaler_travels_in_the_checkpoint(data, tmp_path):
    """fp16 with --grad-clip trains (the clipping itself: test_fp16_step_clips_the_unscaled_gradients),
    and the scaler's state is in the checkpoint: its scale and growth tracker after 60 steps."""
    results = train(data, tmp_path / "run", 60, extra=["--precision", "fp16", "--grad-clip", "1.0", "--lr", "0.01"])
    losses = [e["loss"] for e in events(tmp_path / "run", "train")]
    assert all(map(lambda v: v == v and v < 10, losses)), losses  # finite
    assert losses[-1] < losses[0] * 0.5 and results["test_accuracy"] > 0.5, losses
    scaler = load_checkpoint(Path(results["checkpoint"]))["scaler"]
    # 65536 halved once per overflow; the tracker counts the steps since the last one (growth at 2000)
    assert scaler["scale"] in [65536.0 / 2 ** k for k in range(17)] and 0 <= scaler["_growth_tracker"] <= 60, scaler


def test_checkpoints_cross_between_gpu_and_cpu(data, tmp_path, monkeypatch):
    """Trained on one device, scored and resumed on the other. TF32 off (cuDNN's fp32 LSTM would
    otherwise round its products to 10 mantissa bits, about 1e-3 each, more than the tolerances)."""
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # read by cuBLAS and cuDNN in every child process
    for trained_on, other in (("cuda", "cpu"), ("cpu", "cuda")):
        out = tmp_path / f"{trained_on}-then-{other}"
        results = train(data, out, 30, device=trained_on)
        scored = score(results["checkpoint"], other, tmp_path)
        assert scored["test_accuracy"] == pytest.approx(results["test_accuracy"], abs=2 / 1001)
        assert scored["test_loss"] == pytest.approx(results["test_loss"], rel=1e-3)
        resumed = train(data, out, 40, device=other)
        assert (resumed["device"], resumed["steps"], resumed["resumed_from_step"]) == (other, 40, 30)


@pytest.mark.parametrize("graphs", ["off", "on"])
def test_sigterm_on_gpu_checkpoints_and_resume_finishes(data, tmp_path, graphs):
    """With the step in CUDA graphs too: dropout, saving, the stop and the resume (which captures again)."""
    out = tmp_path / "run"
    args = ["--data-dir", str(data), "--out-dir", str(out), "--max-steps", "3000", "--epochs", "60",
            "--hidden-size", "48", "--log-every", "5", "--dropout", "0.2", "--cuda-graphs", graphs]
    proc = subprocess.Popen([sys.executable, "-m", "dist_rnn.train", *args, "--device", "cuda"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    signal_when_training(proc, out, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    step = events(out, "stop")[0]["step"]
    assert 0 < step < 3000 and list_checkpoints(out)[0][0] == step, output
    check_ok(run_train(args, device="cuda", timeout=600))
    results = read_results(out)
    assert (results["resumed_from_step"], results["steps"]) == (step, 3000)


def test_two_ranks_share_one_gpu_through_gloo(data, tmp_path):
    """--backend gloo: two processes on GPU 0 (local rank modulo the GPU count) follow the
    one-process trajectory up to float rounding (SGD, as on CPU)."""
    sgd = ["--optimizer", "sgd", "--lr", "0.1", "--hidden-size", "64"]
    one = train(data, tmp_path / "one", 30, extra=sgd)
    two = train(data, tmp_path / "two", 30, nproc=2, extra=[*sgd, "--backend", "gloo"])
    assert (two["world_size"], two["device"]) == (2, "cuda")
    a, b = weights(one), weights(two)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-3, f"max parameter difference {worst:.3g}"  # cuDNN may round in TF32


@pytest.mark.parametrize("nproc,optimizer", [(None, "adam"), (None, "sgd"), (2, "adam")])
def test_graphed_step_follows_the_eager_step(tmp_path, nproc, optimizer):
    """The step captured in CUDA graphs (fused capturable Adam; with 2 ranks through gloo, the mean
    between two graphs) against the eager step on the same batches, with head dropout (its masks
    drawn from the CUDA generator, which the warm-up's undoing rewinds): equal within float rounding.
    Without the LSTM's own dropout: cuDNN's is a state of its own (test below)."""
    data = write_mnist(tmp_path / "data", n_train=500, n_test=10)
    found = run_step_worker(data, tmp_path / "out.json", optimizer, nproc, device="cuda", lstm_dropout=0.0)
    assert found["moved"] > 0.01 and found["max_abs_diff"] < 1e-3, found
    assert found["graphed_losses"] == pytest.approx(found["eager_losses"], rel=1e-3)


def test_graphed_step_with_lstm_dropout_leaves_no_reseed_pending():
    """After capture, cuDNN's dropout state is the graph's for good: an eager training forward with
    LSTM dropout does not re-seed it (which would draw from the CUDA generator, moving its offset,
    and free the buffer the graph writes to), and the graph replays, training."""
    from dist_rnn.amp import grad_scaler
    from dist_rnn.config import TrainConfig
    from dist_rnn.data import SequenceView
    from dist_rnn.distributed import DistEnv
    from dist_rnn.model import build_model
    from dist_rnn.step import GraphedStep
    from dist_rnn.train import build_optimizer

    device = torch.device("cuda")
    torch.manual_seed(0)
    c = TrainConfig(hidden_size=32, batch_size=50, dropout=0.3, head_dropout=0.2)
    model = build_model(c, input_size=28).to(device)
    step = GraphedStep(model, list(model.parameters()), build_optimizer(c, model, graphed=True),
                       grad_scaler("fp32", device), SequenceView("row"), "fp32", "ce", None,
                       DistEnv(0, 0, 1, device), local_batch=50, image_shape=(28, 28))
    generator = torch.cuda.default_generators[device.index or 0]
    x = torch.rand(4, 28, 28, device=device)  # (drawn before the offset is read: it moves it)
    offset = generator.get_offset()
    model.rnn(x)  # eager, training mode, dropout 0.3
    assert generator.get_offset() == offset, "cuDNN re-seeded its dropout state after capture"
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (50,), device=device)
    means = []
    for _ in range(2):
        for _ in range(10):
            step(images, labels)
        means.append(step.take_mean_loss().item())
    assert means[1] < means[0], means  # it learns the one batch


def test_fp16_step_clips_the_unscaled_gradients():
    """One eager fp16 step with --grad-clip 0.01: GradScaler scales the loss (by 1024 here, far from
    fp16's overflow), the step unscales before clipping, so the gradients it applies have norm 0.01
    (clipping the scaled ones would leave 0.01 / 1024 after unscaling)."""
    from dist_rnn.config import TrainConfig
    from dist_rnn.data import SequenceView
    from dist_rnn.model import build_model
    from dist_rnn.step import EagerStep
    from dist_rnn.train import build_optimizer

    device = torch.device("cuda")
    torch.manual_seed(0)
    c = TrainConfig(hidden_size=32, lr=0.01, grad_clip=0.01)
    model = build_model(c, input_size=28).to(device)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
    step = EagerStep(model, list(model.parameters()), build_optimizer(c, model, graphed=False), scaler,
                     SequenceView("row"), "fp16", "ce", c.grad_clip, device)
    step(torch.randint(0, 256, (100, 28, 28), dtype=torch.uint8, device=device),
         torch.randint(0, 10, (100,), device=device))
    norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters()])).item()
    assert scaler.get_scale() == 1024.0 and norm == pytest.approx(0.01, rel=1e-3), (scaler.get_scale(), norm)


def test_graphed_two_ranks_follow_one_graphed_process(data, tmp_path):
    """Two ranks sharing GPU 0 through gloo, graphed, follow one graphed process (SGD)."""
    sgd = ["--optimizer", "sgd", "--lr", "0.1", "--hidden-size", "64", "--cuda-graphs", "on"]
    one = train(data, tmp_path / "one", 30, extra=sgd)
    two = train(data, tmp_path / "two", 30, nproc=2, extra=[*sgd, "--backend", "gloo"])
    a, b = weights(one), weights(two)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-3, f"max parameter difference {worst:.3g}"


def test_nccl_refuses_more_processes_than_gpus_in_one_line(data, tmp_path):
    gpus = torch.cuda.device_count()
    proc = run_train(["--data-dir", str(data), "--out-dir", str(tmp_path / "run"), "--max-steps", "2"],
                     nproc=gpus + 1, device="cuda")
    assert proc.returncode != 0
    gpu_words = f"{gpus} GPU" + ("s" if gpus > 1 else "")
    line = (f"python -m dist_rnn.train: error: torchrun started {gpus + 1} processes on this node but it has "
            f"{gpu_words}: use --nproc_per_node {gpus}, or --backend gloo to share GPUs while debugging")
    printed = [text for text in (proc.stdout + proc.stderr).splitlines() if text == line]  # torchrun's report
    assert len(printed) == 1, proc.stderr[-3000:]  # quotes it again, indented
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("nproc", [None, 2])
def test_deterministic_stop_and_resume_is_bitwise_on_gpu(data, tmp_path, nproc):
    """--deterministic: 30 + 30 steps end bitwise where 60 uninterrupted steps end; two ranks share the
    GPU through gloo. With --head-dropout (nn.Dropout, drawn from the CUDA generator a checkpoint
    restores); not --dropout, which cuDNN's LSTM draws from a dropout state of its own that no
    checkpoint holds (see docs/guide.md)."""
    extra = ["--deterministic", "--head-dropout", "0.3"] + (["--backend", "gloo"] if nproc else [])
    full = train(data, tmp_path / "full", 60, nproc=nproc, extra=extra)
    train(data, tmp_path / "part", 30, nproc=nproc, extra=extra)
    resumed = train(data, tmp_path / "part", 60, nproc=nproc, extra=extra)
    assert (resumed["steps"], resumed["resumed_from_step"], resumed["device"]) == (60, 30, "cuda")
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_bench_on_gpu(tmp_path):
    data = write_mnist(tmp_path / "data", n_train=2000, n_test=200)
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.bench", "--data-dir", str(data), "--steps", "20",
                           "--repeats", "1", "--out", str(out), "--device", "cuda"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    from dist_rnn.bench import CUDA_VARIANTS
    # every GPU variant measured (none refused on a GPU), each figure a real speed, the ratios theirs
    assert figures["device"] == "cuda" and figures["skipped_variants"] == {} and "world1_samples_per_s" not in figures
    assert figures["variants"] == {name: list(spec) for name, spec in CUDA_VARIANTS.items()}
    for name in ("original", *CUDA_VARIANTS):
        values = figures[f"{name}_samples_per_s"]
        assert len(values) == 1 and all(0 < v < 1e8 for v in values), (name, values)
    for name in CUDA_VARIANTS:
        assert figures[f"ratio_{name}_vs_original"] == pytest.approx(figures[f"{name}_median"] /
                                                                      figures["original_median"])
    assert 0 < figures["seconds_to_first_step"] < 120 and figures["eval_samples_per_s"] > 0
