"""The bad-input catalogue: every entry point, every kind of mistake.

Each case must end with a non-zero exit, ONE line on stderr that names the problem, no traceback,
and nothing already on disk changed. To add a case, add a row to CASES (or SCRIPT_CASES).
The train/evaluate/data commands run in-process through their real main(); the torchrun and
shell-script cases run as subprocesses.
"""

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CPU_WITHOUT_BF16, REPO, TORCHRUN, idx_bytes, write_mnist

from dist_rnn import evaluate as evaluate_cli
from dist_rnn import predict as predict_cli
from dist_rnn import sweep as sweep_cli
from dist_rnn import train as train_cli
from dist_rnn.data import __main__ as data_cli
from dist_rnn.errors import out_of_memory

MAINS = {"train": train_cli.main, "evaluate": evaluate_cli.main, "predict": predict_cli.main, "data": data_cli.main,
         "sweep": sweep_cli.main}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared, pre-existing files a careless command could damage: good data and a finished run."""
    root = tmp_path_factory.mktemp("world")
    data = write_mnist(root / "data", n_train=600, n_test=130)
    run = root / "run"
    assert train_cli.main(["--data-dir", str(data), "--out-dir", str(run), "--max-steps", "3",
                           "--hidden-size", "16", "--device", "cpu"]) == 0
    fashion = root / "fashion-data"  # a Fashion-MNIST run whose files are gone since
    shutil.copytree(data, fashion)
    assert train_cli.main(["--dataset", "fashion-mnist", "--data-dir", str(fashion), "--out-dir", str(root / "fashion"),
                           "--max-steps", "1", "--hidden-size", "4", "--device", "cpu"]) == 0
    shutil.rmtree(fashion)
    (root / "a-file").write_text("not a directory\n")
    (root / "not-a-checkpoint.pt").write_text("hello\n")
    truncated = root / "truncated" / "checkpoints"
    truncated.mkdir(parents=True)
    for name in ("step-3.pt", "step-3.json"):
        shutil.copy(run / "checkpoints" / name, truncated / name)
    (truncated / "step-3.pt").write_bytes((truncated / "step-3.pt").read_bytes()[:1000])
    return root


def broken_data(world: Path, tmp: Path, how: str) -> Path:
    """A copy of the good data with one thing wrong."""
    d = tmp / "bad-data"
    shutil.copytree(world / "data", d)
    labels, images = d / "t10k-labels-idx1-ubyte", d / "train-images-idx3-ubyte"
    if how == "empty":
        for f in d.iterdir():
            f.unlink()
    elif how == "one-missing":
        labels.unlink()
    elif how == "truncated":
        images.write_bytes(images.read_bytes()[:5000])
    elif how == "not-gzip":
        labels.unlink()
        Path(f"{labels}.gz").write_bytes(b"this is not gzip")
    elif how == "wrong-magic":
        labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    elif how == "count-mismatch":
        labels.write_bytes(idx_bytes(torch.zeros(129, dtype=torch.uint8).numpy()))
    elif how == "gz-truncated":
        images.unlink()
        Path(f"{images}.gz").write_bytes(gzip.compress((world / "data" / images.name).read_bytes())[:3000])
    return d


def bad_data_args(how: str):
    return lambda w, t: ["--data-dir", str(broken_data(w, t, how)), "--out-dir", str(t / "o")]


def ckpt(world: Path, run: str = "run", step: int = 3) -> str:
    return str(world / run / "checkpoints" / f"step-{step}.pt")


# (case id, command, argv builder: (world, tmp) -> list, words the error line must contain)
CASES = [
    # flags and their ranges
    ("batch-size-zero", "train", lambda w, t: ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("hidden-size-negative", "train", lambda w, t: ["--hidden-size", "-5"], "--hidden-size must be >= 1"),
    ("num-layers-zero", "train", lambda w, t: ["--num-layers", "0"], "--num-layers must be >= 1"),
    ("dropout-above-one", "train", lambda w, t: ["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    ("dropout-negative", "train", lambda w, t: ["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    ("dropout-one-layer", "train", lambda w, t: ["--dropout", "0.3", "--num-layers", "1"], "--num-layers >= 2"),
    ("unknown-cell", "train", lambda w, t: ["--cell", "transformer"], "invalid choice: 'transformer'"),
    ("unknown-preset", "train", lambda w, t: ["--preset", "seed-gru"], "invalid choice: 'seed-gru'"),
    ("unknown-precision", "train", lambda w, t: ["--precision", "fp8"], "invalid choice: 'fp8'"),
    ("fp16-without-cuda", "train", lambda w, t: ["--precision", "fp16", "--device", "cpu",
                                                 "--data-dir", str(w / "data"), "--out-dir", str(t / "o")],
     "--precision fp16 needs CUDA"),
    ("lr-zero", "train", lambda w, t: ["--lr", "0"], "--lr must be > 0"),
    ("lr-not-a-number", "train", lambda w, t: ["--lr", "fast"], "invalid float value: 'fast'"),
    ("epochs-zero", "train", lambda w, t: ["--epochs", "0"], "--epochs must be >= 1"),
    ("momentum-with-adam", "train", lambda w, t: ["--momentum", "0.9"], "--momentum applies to --optimizer sgd"),
    ("max-steps-negative", "train", lambda w, t: ["--max-steps", "-1"], "--max-steps must be >= 0"),
    ("dist-timeout-zero", "train", lambda w, t: ["--dist-timeout", "0"], "--dist-timeout must be > 0"),
    ("overwrite-without-resume-none", "train", lambda w, t: ["--overwrite"], "--overwrite goes with --resume none"),
    ("misspelt-flag", "train", lambda w, t: ["--hiden-size", "3"], "unrecognized arguments: --hiden-size"),
    ("class-weights-without-ce", "train", lambda w, t: ["--class-weights", "balanced", "--loss", "mse"],
     "--class-weights balanced weighs the cross-entropy: it needs --loss ce"),
    ("another-librarys-flag", "train", lambda w, t: ["--learning-rate", "0.1"], "(did you mean --lr?)"),
    ("keep-last-zero", "train", lambda w, t: ["--keep-last", "0"], "--keep-last must be >= 1"),
    ("model-too-big-for-memory", "train", lambda w, t: ["--data-dir", str(w / "data"), "--hidden-size", "100000",
                                                        "--out-dir", str(t / "o" / "deeper")],
     "parameters: its weights, gradients and adam state alone need"),
    ("crop-whole-image", "train", lambda w, t: ["--data-dir", str(w / "data"), "--crop-top", "20", "--crop-bottom",
                                                "8", "--out-dir", str(t / "o")],
     "--crop-top 20 and --crop-bottom 8 leave none of the images' 28 rows"),
    ("val-size-whole-training-set", "train", lambda w, t: ["--data-dir", str(w / "data"), "--val-size", "600",
                                                           "--out-dir", str(t / "o")],
     "--val-size 600 holds out 600 of the 600 training samples"),
    ("val-size-leaves-less-than-a-batch", "train", lambda w, t: ["--data-dir", str(w / "data"), "--val-size", "0.9",
                                                                 "--out-dir", str(t / "o")],
     "--val-size 0.9 leaves 60 training samples, fewer than one global batch (--batch-size 100)"),
    ("val-size-not-whole", "train", lambda w, t: ["--val-size", "2.5"], "--val-size is a count (>= 1, whole) or a"),
    ("early-stop-without-validation", "train", lambda w, t: ["--early-stop", "3"],
     "--early-stop needs a validation split to watch: add --val-size"),
    ("grad-accum-zero", "train", lambda w, t: ["--grad-accum", "0"], "--grad-accum must be >= 1"),
    ("grad-accum-does-not-divide", "train", lambda w, t: ["--data-dir", str(w / "data"), "--grad-accum", "3",
                                                          "--out-dir", str(t / "o")],
     "--batch-size 100 (global) is 100 per process, which does not split into --grad-accum 3 equal micro-batches"),
    ("batch-larger-than-data", "train", lambda w, t: ["--data-dir", str(w / "data"), "--batch-size", "1000",
                                                      "--out-dir", str(t / "o")], "larger than the training set"),
    # data directories
    ("data-dir-missing", "train", lambda w, t: ["--data-dir", str(t / "nowhere"), "--out-dir", str(t / "o")],
     "train-images-idx3-ubyte: missing"),
    *[(f"data-{how}", "train", bad_data_args(how), words)
      for how, words in [("empty", "train-images-idx3-ubyte: missing"),
                         ("one-missing", "t10k-labels-idx1-ubyte: missing"),
                         ("truncated", "truncated IDX file"), ("not-gzip", "corrupt gzip"),
                         ("gz-truncated", "corrupt gzip"), ("wrong-magic", "magic number"),
                         ("count-mismatch", "130 images but")]],
    # output directories
    ("out-dir-is-a-file", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(w / "a-file")],
     "is a file, not a directory"),
    ("out-dir-not-writable", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", "/proc/dist_rnn"],
     "cannot write there"),
    # checkpoints
    ("resume-missing-file", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(t / "o"),
                                                   "--resume", str(t / "nope.pt")], "no such checkpoint file"),
    ("resume-truncated", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(t / "o"),
                                                "--resume", str(w / "truncated" / "checkpoints" / "step-3.pt")],
     "truncated or altered"),
    ("resume-all-broken", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(w / "truncated"),
                                                 "--hidden-size", "16"], "no valid checkpoint"),
    ("resume-other-model", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(w / "run"),
                                                  "--hidden-size", "32"], "hidden_size 16 -> 32"),
    ("resume-not-a-checkpoint", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(t / "o"),
                                                       "--resume", str(w / "not-a-checkpoint.pt")],
     "not-a-checkpoint.pt: not a checkpoint (a text file)"),
    ("resume-none-over-a-run", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(w / "run"),
                                                      "--resume", "none"], "already holds checkpoints"),
    # dist_rnn.evaluate
    ("evaluate-no-checkpoint-flag", "evaluate", lambda w, t: [], "--checkpoint is required"),
    ("evaluate-missing-file", "evaluate", lambda w, t: ["--checkpoint", str(t / "nope.pt")], "no such checkpoint"),
    ("evaluate-not-a-checkpoint", "evaluate", lambda w, t: ["--checkpoint", str(w / "not-a-checkpoint.pt")],
     "not a checkpoint (a text file)"),
    ("evaluate-metadata-file", "evaluate", lambda w, t: ["--checkpoint", ckpt(w).replace(".pt", ".json")],
     "this is the metadata file beside step-"),
    ("evaluate-batch-zero", "evaluate", lambda w, t: ["--checkpoint", ckpt(w), "--batch-size", "0"],
     "--batch-size must be >= 1"),
    ("evaluate-data-missing", "evaluate", lambda w, t: ["--checkpoint", ckpt(w), "--data-dir", str(t / "none")],
     "t10k-images-idx3-ubyte: missing"),
    ("evaluate-fashion-files-gone", "evaluate", lambda w, t: ["--checkpoint", ckpt(w, "fashion", 1)],
     "--dataset fashion-mnist has no default --data-dir (the default holds MNIST's files, named alike)"),
    # dist_rnn.predict
    ("predict-fashion-images", "predict", lambda w, t: ["--checkpoint", ckpt(w, "fashion", 1), str(w / "a-file")],
     "step-1.pt: trained on images of --dataset fashion-mnist, and predict reads handwritten digits (MNIST); score it "
     "with python -m dist_rnn.evaluate"),
    # dist_rnn.data
    ("data-no-command", "data", lambda w, t: [], "required: command"),
    ("data-prepare-empty", "data", lambda w, t: ["prepare", "--no-download", "--data-dir", str(t / "empty")],
     "train-images-idx3-ubyte: missing"),
    # dist_rnn.sweep: the spec is checked whole before anything is written or started
    ("sweep-unknown-option", "sweep", lambda w, t: sweep_args(t, "base: {hiden_size: 8}"),
     "base: unknown option 'hiden_size' (did you mean 'hidden_size'?)"),
    ("sweep-another-librarys-option", "sweep", lambda w, t: sweep_args(t, "grid: {learning_rate: [0.1]}"),
     "grid: unknown option 'learning_rate' (did you mean 'lr'?)"),
    ("sweep-wrong-type", "sweep", lambda w, t: sweep_args(t, "grid: {lr: [0.1, fast]}"),
     "option 'lr' must be float, got str 'fast'"),
    ("sweep-no-runs", "sweep", lambda w, t: sweep_args(t, "grid: {lr: []}"), "no runs"),
    ("sweep-no-seeds", "sweep", lambda w, t: sweep_args(t, "seeds: []"), "no runs"),
    ("sweep-seed-in-grid", "sweep", lambda w, t: sweep_args(t, "grid: {seed: [1, 2]}"),
     "'seed' is set by the sweep (list them in 'seeds')"),
    ("sweep-unknown-key", "sweep", lambda w, t: sweep_args(t, "grids: {lr: [0.1]}"), "did you mean 'grid'?"),
    ("sweep-run-that-cannot-work", "sweep", lambda w, t: sweep_args(t, "grid: {early_stop: [2]}"),
     "run early_stop=2,seed=0: early_stop needs a validation split"),
    ("sweep-not-yaml", "sweep", lambda w, t: sweep_args(t, "grid: {lr: [0.1"), "spec.yaml: not valid yaml: "),
    ("sweep-missing-spec", "sweep", lambda w, t: [str(t / "nope.yaml"), "--out-dir", str(t / "o")], "no such file"),
    ("sweep-no-out-dir", "sweep", lambda w, t: sweep_args(t, "grid: {lr: [0.1]}")[:1], "--out-dir is needed"),
    ("sweep-array-without-slurm", "sweep", lambda w, t: [*sweep_args(t, "seeds: 1"), "--array", "%2"],
     "go with --slurm"),
    ("sweep-jobs-zero", "sweep", lambda w, t: [*sweep_args(t, "seeds: 1"), "--jobs", "0"], "--jobs must be >= 1"),
    ("sweep-jobs-with-slurm", "sweep", lambda w, t: [*sweep_args(t, "seeds: 1"), "--slurm", "--jobs", "2"],
     "--jobs is for runs here"),
    ("sweep-option-twice", "sweep", lambda w, t: sweep_args(t, "grid: {hidden-size: [8], hidden_size: [16]}"),
     "'hidden_size' names the option hidden_size a second time"),
    ("sweep-refit-without-validation", "sweep", lambda w, t: [*sweep_args(t, "seeds: 1"), "--refit", "2"],
     "--refit trains the configuration chosen on validation: give base a val_size, or the spec 'folds: K'"),
    ("sweep-refit-that-cannot-work", "sweep",
     lambda w, t: [*sweep_args(t, "base: {val_size: 0.1}\ngrid: {early_stop: [null, 2]}"), "--refit", "1"],
     "run refit,early_stop=2,seed=0 (a refit, without a validation split): --early-stop needs"),
    ("sweep-report-not-a-sweep", "sweep", lambda w, t: ["--report", str(w / "run")], "not a sweep directory"),
]


def sweep_args(tmp: Path, spec: str) -> list:
    """A sweep spec file holding `spec` and the arguments that run it into tmp/o."""
    path = tmp / "spec.yaml"
    path.write_text(spec + "\n")
    return [str(path), "--out-dir", str(tmp / "o")]


def snapshot(*roots: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots if root.exists() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case,command,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, command, argv, words, world, tmp_path, capsys):
    args = argv(world, tmp_path)
    if command in ("train", "evaluate"):
        args = ["--device", "cpu", *args]  # a case's own --device comes later and wins
    capsys.readouterr()
    before = snapshot(world, tmp_path)
    code = MAINS[command](args)  # argparse's own errors are UserErrors too
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit status {code}"
    assert err.count("\n") == 1 and "Traceback" not in err, f"not one line:\n{err}"
    assert words in err, err
    assert snapshot(world, tmp_path) == before, "files changed"
    assert not (tmp_path / "o").exists()  # a refused run leaves no out-dir behind


def test_catalogue_size():
    assert len(CASES) + len(SCRIPT_CASES) >= 25


# Subprocess cases: torchrun and the shell scripts.
SCRIPT_CASES = [
    ("multi-node-without-NNODES", ["bash", "launch/multi_node.sh"], "set NNODES"),
    ("local-cluster-bad-nodes", ["bash", "slurm/local-cluster.sh", "start", "--nodes", "zero"],
     "--nodes must be a positive number"),
    ("local-cluster-no-command", ["bash", "slurm/local-cluster.sh"], "usage:"),
]


@pytest.mark.parametrize("case,cmd,words", SCRIPT_CASES, ids=[c[0] for c in SCRIPT_CASES])
def test_bad_input_scripts(case, cmd, words):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0 and words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


# On a CPU without bf16 (emulated, see conftest.CPU_WITHOUT_BF16): (case, module, argv, extra env).
BF16_CASES = [
    ("train", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(t / "o"), "--precision", "bf16"],
     {}),
    ("accelerate-mixed-precision", "train", lambda w, t: ["--data-dir", str(w / "data"), "--out-dir", str(t / "o")],
     {"ACCELERATE_MIXED_PRECISION": "bf16"}),
    ("evaluate", "evaluate", lambda w, t: ["--checkpoint", ckpt(w), "--precision", "bf16", "--out", str(t / "o")],
     {}),
]


@pytest.mark.parametrize("case,module,argv,env", BF16_CASES, ids=[c[0] for c in BF16_CASES])
def test_bf16_on_a_cpu_without_it_is_one_line(case, module, argv, env, world, tmp_path):
    """oneDNN has no bf16 LSTM there: a refusal before anything is written, not its 20-line traceback
    from the first forward. The exit status is 2 as for every bad input."""
    before = snapshot(world, tmp_path)
    proc = subprocess.run([sys.executable, "-m", f"dist_rnn.{module}", *argv(world, tmp_path), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, **CPU_WITHOUT_BF16, **env})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"python -m dist_rnn.{module}: error: --precision bf16" in proc.stderr
    assert "this CPU cannot run the LSTM in bfloat16" in proc.stderr and "use --precision fp32" in proc.stderr
    assert ("accelerate launch --mixed_precision bf16" in proc.stderr) == bool(env)
    assert snapshot(world, tmp_path) == before and not (tmp_path / "o").exists()


def test_out_of_memory_is_one_line_with_the_size_asked_for():
    """A real failed allocation from torch's CPU allocator (what a too large batch meets in training)."""
    try:
        torch.empty(2 ** 40, dtype=torch.uint8)  # 1 TiB: more than any test machine holds
    except RuntimeError as e:
        error = out_of_memory(e, "cpu")
    assert str(error) == ("out of memory on cpu: 1024.0 GiB asked for; use a smaller batch_size, eval_batch_size, "
                          "hidden_size or num_layers (or more processes)")
    assert out_of_memory(ValueError("can't allocate memory"), "cpu") is None


def test_broken_torchvision_is_one_line(world, tmp_path):
    """torchvision built for another torch fails at import with 'operator torchvision::nms does not
    exist' (a stand-in package that fails the same way shadows the real one here)."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    proc = subprocess.run([sys.executable, "-m", "dist_rnn.train", "--data-dir", str(world / "data"), "--loader",
                           "dataloader", "--out-dir", str(tmp_path / "o"), "--device", "cpu"], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"does not work with torch {torch.__version__} (operator torchvision::nms does not exist): install " \
           "the torchvision built for this torch" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_bad_input_under_torchrun_is_one_line_from_rank_0(world, tmp_path):
    """torchrun prints its own ChildFailedError report, whose root cause is the workers' line; each
    worker's own stderr (captured with --redirects) holds the clean line, from rank 0 only."""
    logs = tmp_path / "logs"
    proc = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", "--redirects=3", f"--log-dir={logs}",
                           "-m", "dist_rnn.train", "--data-dir", str(world / "data"), "--batch-size", "99",
                           "--out-dir", str(tmp_path / "o"), "--device", "cpu"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode != 0
    errs = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert set(errs) == {"0", "1"}, errs
    line = "python -m dist_rnn.train: error: --batch-size 99 (global) does not divide over 2 processes"
    assert errs["0"] == line + "\n"
    assert errs["1"] == "" and not (tmp_path / "o").exists()
    # torchrun's own report names the cause (the workers' error files), not "To enable traceback see"
    assert f"traceback : {line}" in proc.stderr and "To enable traceback" not in proc.stderr, proc.stderr
    # dist_rnn.torchrun: the same report, without torchrun's Python traceback above it
    ours = subprocess.run([sys.executable, "-m", "dist_rnn.torchrun", *proc.args[3:]], cwd=REPO, capture_output=True,
                          text=True)
    assert ours.returncode == 1 and f"traceback : {line}" in ours.stderr and "Traceback" not in ours.stderr
