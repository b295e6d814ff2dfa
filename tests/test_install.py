"""dist_rnn installed as a user installs it (not editable: a wheel built from the checkout,
installed into a directory of its own) and used from a directory that is no checkout: its commands
run, and its SLURM files are package data that `dist_rnn.sweep --slurm`, the sbatch templates and
`dist_rnn.slurm_files` find without DIST_RNN_HOME. The SLURM part runs where a cluster answers
(slurm/local-cluster.sh, as in test_slurm.py) and is skipped, saying why, elsewhere.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, check_ok, write_mnist
from PIL import Image
from test_slurm import cluster_problem

SLURM_FILES = ["train.sbatch", "multinode.sbatch", "train-cpu.sbatch", "job.sh", "local-cluster.sh"]
# 2 tiny runs with a validation split (a configuration is chosen)
SPEC = """\
base: {epochs: 1, hidden_size: 8, num_layers: 1, batch_size: 50, limit_train: 300, limit_test: 100, val_size: 100,
       device: cpu}
grid: {lr: [0.003, 0.03]}
seeds: [0]
"""


# Run by the installed copy (`python -c PROBE CHECKOUT OTHER_DIR`): where dist_rnn and the sweep's job
# script are (with DIST_RNN_HOME a checkout, and a directory that is none), and what
# `python -m dist_rnn.slurm_files ARGS` answers to some ARGS ([exit status, stdout, stderr]).
PROBE = """
import contextlib, io, json, os, sys
import dist_rnn, dist_rnn.errors, dist_rnn.slurm_files, dist_rnn.sweep
found = {"dist_rnn": dist_rnn.__file__, "home": str(dist_rnn.sweep.slurm_home())}
os.environ["DIST_RNN_HOME"] = sys.argv[1]  # a checkout: it overrides the installed files
found["DIST_RNN_HOME"] = str(dist_rnn.sweep.slurm_home())
os.environ["DIST_RNN_HOME"] = sys.argv[2]  # not one
try:
    dist_rnn.sweep.slurm_home()
except dist_rnn.errors.UserError as e:
    found["bad DIST_RNN_HOME"] = str(e)
del os.environ["DIST_RNN_HOME"]
sys.argv = ["python -m dist_rnn.slurm_files"]
for args in (["--list"], ["--print", "train.sbatch"], ["--print", "train.sbach"]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = dist_rnn.slurm_files.main(args)
    found[" ".join(args)] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(found))
"""


class Installed:
    """The installed copy: `site` (what PYTHONPATH names), `work` (the directory commands run in)."""

    def __init__(self, root: Path):
        self.root, self.site, self.work = root, root / "site", root / "work"
        self.package = self.site / "dist_rnn"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DIST_RNN_HOME", "PYTHONPATH")}
        # PYTHON: what the SLURM jobs run (this interpreter, with torch); PYTHONPATH reaches them through sbatch.
        # NPROC: one process per node, said (job.sh would start torch to count the node's GPUs).
        self.env.update(PYTHONPATH=str(self.site), PYTHON=sys.executable, NPROC="1")

    def run(self, *args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
        """`python ARGS` (or the command ARGS, when it is not a python flag) in `work`."""
        command = [sys.executable, *args] if args[0].startswith("-") else list(args)
        return subprocess.run(command, cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)

    def module(self, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        proc = self.run("-m", module, *args, timeout=timeout)
        check_ok(proc)
        return proc

    def run_all(self, *commands: list[str], timeout: int = 300) -> list[subprocess.CompletedProcess]:
        """Like run(), the commands at once (each mostly starts Python and torch)."""
        procs = [subprocess.Popen([sys.executable, *c] if c[0].startswith("-") else c, cwd=self.work, env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
        done = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """`pip install --target` of the checkout (no dependencies: this interpreter has them), built from a
    copy of what the wheel is made of, so that the build writes nothing into the checkout."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("dist_rnn", "slurm", "launch"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    check_ok(subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                             "--no-build-isolation", "--no-index", "--target", str(root / "site"), str(src)],
                            cwd=root, capture_output=True, text=True, timeout=300))
    i = Installed(root)
    i.work.mkdir()
    return i


@pytest.fixture(scope="module")
def mnist(installed) -> Path:
    return write_mnist(installed.root / "mnist")


def test_the_installed_copy_is_used_and_holds_the_slurm_files(installed):
    for name in SLURM_FILES:  # real files (not links into the checkout), as in the checkout
        shipped = installed.package / "slurm" / name
        assert not shipped.is_symlink() and shipped.read_bytes() == (REPO / "slurm" / name).read_bytes(), name
    # what job.sh sources from ../launch/ on jobs of several nodes
    assert (installed.package / "launch" / "gloo-ifname.sh").read_bytes() == \
        (REPO / "launch" / "gloo-ifname.sh").read_bytes()

    # The installed dist_rnn.slurm_files (and where the sweep finds the job script), in one process
    # (each would mostly start torch), and the console script pip wrote.
    probe, script = installed.run_all(["-c", PROBE, str(REPO), str(installed.work)],
                                      [str(installed.site / "bin" / "dist-rnn-slurm"), "--path", "local-cluster.sh"])
    check_ok(probe)
    found = json.loads(probe.stdout)
    assert found["dist_rnn"] == str(installed.package / "__init__.py") and found["home"] == str(installed.package)
    assert found["DIST_RNN_HOME"] == str(REPO)
    assert found["bad DIST_RNN_HOME"] == f"--slurm: DIST_RNN_HOME={installed.work} has no slurm/job.sh: point it at a " \
        "dist_rnn checkout, or unset it to use the installed package's"
    code, out, err = found["--list"]
    assert code == 0 and out.splitlines()[0] == f"in {installed.package / 'slurm'}:", out
    assert [line.split()[0] for line in out.splitlines()[1:]] == SLURM_FILES
    assert found["--print train.sbatch"] == [0, (REPO / "slurm" / "train.sbatch").read_text(), ""]
    code, out, err = found["--print train.sbach"]
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "no SLURM file 'train.sbach' (did you mean 'train.sbatch'?)" in err
    check_ok(script)
    assert script.stdout == f"{installed.package / 'slurm' / 'local-cluster.sh'}\n"
    usage = installed.run("bash", script.stdout.strip())  # it runs from there: no command given -> its usage
    assert usage.returncode == 2 and "usage:" in usage.stderr, usage.stderr


def test_train_evaluate_predict_plot(installed, mnist):
    run = installed.work / "run"
    installed.module("dist_rnn.train", "--data-dir", str(mnist), "--out-dir", str(run), "--limit-train", "200",
                     "--limit-test", "100", "--epochs", "1", "--hidden-size", "8", "--device", "cpu")
    results = json.loads((run / "results.json").read_text())
    assert results["test_samples"] == 100 and 0 <= results["test_accuracy"] <= 1 and results["steps"] == 2
    checkpoint = str(installed.work / results["checkpoint"])  # relative to the run's working directory

    digit = installed.work / "digit.png"
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = 255  # a "1"
    Image.fromarray(image).save(digit)
    evaluate, predict, plot = installed.run_all(
        ["-m", "dist_rnn.evaluate", "--checkpoint", checkpoint, "--data-dir", str(mnist), "--limit-test", "100",
         "--out", "eval.json", "--device", "cpu"],
        ["-m", "dist_rnn.predict", "--checkpoint", checkpoint, "--json", str(digit)],
        ["-m", "dist_rnn.plot", str(run), "-o", "curves.png"])
    for proc in (evaluate, predict, plot):
        check_ok(proc)
    scored = json.loads((installed.work / "eval.json").read_text())
    assert scored["test_samples"] == 100 and scored["test_accuracy"] == results["test_accuracy"]
    [record] = json.loads(predict.stdout)
    assert record["file"] == str(digit) and 0 <= record["digit"] <= 9 and abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert (installed.work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_sweep(sweep_dir: Path, out: str, lrs: list) -> None:
    """Every run finished, the report tables them and marks one configuration."""
    results = [json.loads(p.read_text()) for p in sorted((sweep_dir / "runs").glob("*/results.json"))]
    assert len(results) == len(lrs) and all(r["best_val_accuracy"] is not None for r in results), out
    with open(sweep_dir / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["lr"] for r in rows] == lrs and [r["chosen"] for r in rows].count("True") == 1
    assert "**(chosen)**" in (sweep_dir / "report.md").read_text() and f"report: {sweep_dir / 'report.md'}" in out


def test_sweep_here(installed, mnist):
    (installed.work / "spec.yaml").write_text(SPEC)
    sweep_dir = installed.work / "sweep"
    proc = installed.module("dist_rnn.sweep", "spec.yaml", "--out-dir", str(sweep_dir), "--data-dir", str(mnist),
                            "--jobs", "2")
    check_sweep(sweep_dir, proc.stdout, ["0.003", "0.03"])


@pytest.mark.skipif(cluster_problem() is not None, reason=str(cluster_problem()))
def test_sweep_and_a_template_on_slurm(installed, mnist):
    """The job array's tasks, and an sbatch template of the installed package submitted from a
    directory with no checkout, run the installed job.sh and the installed dist_rnn."""
    # one run (its task and the template's job at once on the local cluster's two nodes)
    (installed.work / "slurm-spec.yaml").write_text(SPEC.replace("[0.003, 0.03]", "[0.003]"))
    # what `slurm_files --print train-cpu.sbatch` prints (see the first test), to a directory with no checkout
    shutil.copy(installed.package / "slurm" / "train-cpu.sbatch", installed.work)
    single = installed.work / "single"
    submitted = subprocess.Popen(  # --wait: returns when the job has ended, with its exit status
        ["sbatch", "--wait", "--parsable", "--cpus-per-task=1", f"--output={installed.work}/single-%j.out",
         "train-cpu.sbatch", "--data-dir", str(mnist), "--out-dir", str(single), "--limit-train", "200", "--limit-test",
         "100", "--max-steps", "2", "--hidden-size", "8", "--device", "cpu"],
        cwd=installed.work, env=installed.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    sweep_dir = installed.work / "slurm-sweep"
    proc = installed.module("dist_rnn.sweep", "slurm-spec.yaml", "--out-dir", str(sweep_dir), "--data-dir",
                            str(mnist), "--slurm", "--wait", "--sbatch-args", "--cpus-per-task=1 --time=00:10:00", timeout=600)
    check_sweep(sweep_dir, proc.stdout, ["0.003"])
    logs = sorted((sweep_dir / "slurm").glob("*.out"))
    ran = f"job script: {installed.package / 'slurm' / 'job.sh'}; dist_rnn: {installed.package / '__init__.py'}"
    assert len(logs) == 1 and all(ran in log.read_text() for log in logs), [log.read_text() for log in logs]

    out, err = submitted.communicate(timeout=300)
    assert submitted.returncode == 0, out + err
    log = (installed.work / f"single-{out.strip().split(';')[0]}.out").read_text()
    assert ran in log and json.loads((single / "results.json").read_text())["steps"] == 2, log
