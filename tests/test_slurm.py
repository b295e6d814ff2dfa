"""The slurm/ job scripts, run for real on the local SLURM cluster of slurm/local-cluster.sh.

.ci/run starts that cluster (two emulated nodes) before the tests and stops it afterwards. Where no
SLURM cluster answers, these tests are skipped, saying why.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, real_mnist_dir, write_mnist
from test_sweep import SPEC, check_report, report_rows


def cluster_problem():
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (run slurm/local-cluster.sh start)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if proc.returncode != 0 or "idle" not in proc.stdout and "mix" not in proc.stdout:
        return f"no SLURM cluster answers (sinfo: {proc.stderr.strip() or proc.stdout.strip()})"
    return None


pytestmark = pytest.mark.skipif(cluster_problem() is not None, reason=str(cluster_problem()))


def node_cpus() -> list:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True, check=True).stdout
    return [int(x) for x in out.split()]


def sbatch(script: str, job_args: list, tmp_path: Path, options=()) -> int:
    """Submit slurm/<script> from the repository (as a user would); returns the job id."""
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", str(Path(os.sys.executable)))}
    proc = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", *options,
                           f"slurm/{script}", *job_args], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().split(";")[0])


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)


def job_gone(job: int) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip() in ("", "COMPLETED")


def log_of(tmp_path: Path, job: int) -> str:
    return (tmp_path / f"slurm-{job}.out").read_text()


@pytest.fixture
def data(tmp_path) -> Path:
    return real_mnist_dir() or write_mnist(tmp_path / "data", n_train=20000, n_test=1001)


def cpu_options() -> list:
    """train-cpu.sbatch asks for 2 cores; an emulated node may have fewer (a job asking for more
    cores than a node has waits forever)."""
    return [f"--cpus-per-task={min(2, max(node_cpus()))}"]


def test_train_cpu_sbatch(tmp_path, data):
    out = tmp_path / "run"
    job = sbatch("train-cpu.sbatch", ["--preset", "seed-lstm", "--max-steps", "200", "--data-dir", str(data),
                                      "--out-dir", str(out), "--device", "cpu"], tmp_path, cpu_options())
    wait_until(lambda: job_gone(job), 300, f"job {job}")
    log = log_of(tmp_path, job)
    assert f"SLURM_JOB_ID={job} SLURM_RESTART_COUNT=0" in log
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 200 and results["test_samples"] == (10000 if real_mnist_dir() else 1001), log


def test_preemption_checkpoints_requeues_and_resumes(tmp_path, data):
    out = tmp_path / "run"
    job = sbatch("train-cpu.sbatch", ["--max-steps", "150", "--log-every", "10", "--limit-train", "20000",
                                      "--limit-test", "500", "--data-dir", str(data), "--out-dir", str(out),
                                      "--device", "cpu"],
                 tmp_path, cpu_options())
    metrics = out / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and '"train"' in metrics.read_text(), 120, "the first logged step")
    subprocess.run(["scancel", "--batch", "--signal=USR1", str(job)], check=True)
    wait_until(lambda: (out / "results.json").exists() and job_gone(job), 300, "the requeued job to finish")

    log = log_of(tmp_path, job)
    assert "SLURM_RESTART_COUNT=0" in log and f"SLURM_JOB_ID={job} SLURM_RESTART_COUNT=1" in log, log
    assert "received USR1" in log and "requeueing job" in log
    stops = [json.loads(line) for line in metrics.read_text().splitlines() if '"stop"' in line]
    assert len(stops) == 1 and stops[0]["signal"] == "SIGUSR1"
    stopped_at = stops[0]["step"]
    assert f"stopped by SIGUSR1 at step {stopped_at} " in log and f"resumed from step {stopped_at} " in log
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 150 and results["resumed_from_step"] == stopped_at > 0


def test_multinode_sbatch_on_two_nodes(tmp_path):
    if len(node_cpus()) < 2:
        pytest.skip("the local cluster has one node (slurm/local-cluster.sh start --nodes 2)")
    data = write_mnist(tmp_path / "data", n_train=2000, n_test=1001)
    out = tmp_path / "run"
    job = sbatch("multinode.sbatch", ["--max-steps", "10", "--data-dir", str(data), "--out-dir", str(out),
                                      "--device", "cpu"],
                 tmp_path, ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"])
    wait_until(lambda: job_gone(job), 300, f"job {job}")
    log = log_of(tmp_path, job)
    results = json.loads((out / "results.json").read_text())
    assert "nodes=2 processes/node=1" in log and results["world_size"] == 2, log
    # each node chose gloo's interface: node1 resolves to 127.0.0.1 here, so the default route's
    route = subprocess.run(["ip", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout
    default = re.search(r" dev (\S+)", route)
    chosen = re.findall(r"node \S+: GLOO_SOCKET_IFNAME=(\S+)\n", log)
    assert chosen == [default[1] if default else "unset"] * 2, log
    assert results["test_samples"] == 1001 and results["steps"] == 10


def test_sweep_as_a_job_array(tmp_path):
    """test_sweep.py's spec (4 configurations x 2 seeds) as one SLURM job array, at most 2 tasks at
    once, --wait returning once it has ended with the same report a local sweep gives, then the
    refit of the choice as a second array."""
    data = write_mnist(tmp_path / "data")
    (tmp_path / "spec.yaml").write_text(SPEC)
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", str(Path(os.sys.executable)))}
    proc = subprocess.run([os.sys.executable, "-m", "dist_rnn.sweep", str(tmp_path / "spec.yaml"), "--out-dir",
                           str(sweep_dir), "--data-dir", str(data), "--slurm", "--array", "%2", "--wait",
                           "--refit", "1", "--sbatch-args", "--cpus-per-task=1 --time=00:10:00"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"submitted job array (\d+): 8 runs, at most 2 at once", proc.stdout)
    assert job, proc.stdout
    check_report(sweep_dir)
    logs = sorted(p.name for p in (sweep_dir / "slurm").glob("*.out"))
    refit = re.search(r"submitted job array (\d+): 1 refit runs, at most 2 at once", proc.stdout)
    assert refit and int(refit[1]) > int(job[1]), proc.stdout
    chosen = next(r for r in report_rows(sweep_dir) if r["refit"] == "True")
    name = f"refit,lr={chosen['lr']},hidden_size={chosen['hidden_size']},seed=0"
    results = json.loads((sweep_dir / "runs" / name / "results.json").read_text())
    assert results.get("val_accuracy") is None and results["test_samples"] == 130
    assert logs == sorted([f"{job[1]}_{i}.out" for i in range(8)] + [f"{refit[1]}_0.out"])
    assert "SLURM_RESTART_COUNT=0" in (sweep_dir / "slurm" / logs[0]).read_text()
    # Options the cluster cannot meet: one line, nothing written, nothing submitted.
    refused = subprocess.run([os.sys.executable, "-m", "dist_rnn.sweep", str(tmp_path / "spec.yaml"), "--out-dir",
                              str(tmp_path / "other"), "--slurm", "--sbatch-args=--partition=no-such-partition"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "sbatch refuses the array: " in refused.stderr and not (tmp_path / "other").exists()
