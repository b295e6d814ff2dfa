"""The lab (experiments/): records are cached with what produced them, reused, and the report is
regenerated from the cache alone (the committed docs/experiments.md included)."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, real_mnist_dir
from dist_rnn.plot import pyplot
from experiments import lab as experiments_lab, run
from experiments.bidirectional import half_probes
from experiments.lab import ExperimentsConfig, Lab, Report


def run_experiments(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_training_record_is_cached_with_its_provenance(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiments_lab, "PROBE_SAMPLES", 200)
    c = ExperimentsConfig(data_dir=str(mnist_dir), cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"),
                          seeds=1)
    lab = Lab(c, ["bidirectional"])
    args = ("--hidden-size", "8", "--num-layers", "1", "--epochs", "1", "--bidirectional", "--readout", "final",
            "--device", "cpu")  # the analysis scores on CPU: train there too, so the two accuracies agree
    record = lab.train("bidirectional", "tiny", args, 0, functools.partial(half_probes, lab))
    assert record["command"][:3] == ["python", "-m", "dist_rnn.train"] and "--seed" in record["command"]
    assert record["machine"]["cores"] >= 1 and record["started"] and record["seconds"] > 0
    # provenance: the commit the code ran from, and whether the tree held changes no commit has
    assert record["machine"]["commit"] and isinstance(record["machine"]["dirty"], bool)
    assert record["results"]["steps"] == 6 and [e["step"] for e in record["evals"]] == [6]
    analysis = record["analysis"]
    assert sum(map(sum, analysis["confusion"])) == 130 and 0 <= analysis["probe_backward_half"] <= 1
    assert analysis["test_accuracy"] == pytest.approx(record["results"]["test_accuracy"])
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == record
    # The same run again comes from the cache: no new run directory is made
    for run_dir in (tmp_path / "runs").iterdir():
        for f in run_dir.rglob("*"):
            f.unlink() if f.is_file() else None
    assert Lab(c, ["bidirectional"]).train("bidirectional", "tiny", args, 0) == record
    assert not any(f.is_file() for f in (tmp_path / "runs").rglob("*"))
    # --report-only never trains: a run that is not cached is simply missing
    only = Lab(ExperimentsConfig(**{**c.__dict__, "report_only": True}), ["bidirectional"])
    assert only.train("bidirectional", "other", args, 1) is None


def test_one_measurement_suite_and_report_only(tmp_path, capsys):
    report = tmp_path / "experiments.md"
    args = ["--seeds", "1", "--cache-dir", str(tmp_path / "cache"), "--report", str(report), "--runs-dir",
            str(tmp_path / "runs"), "--data-dir", str(tmp_path / "no-data-needed")]
    proc = run_experiments(["batch_first", *args])
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    section = text.split("## What does `batch_first` change?")[1].split("\n## ")[0]
    assert "**Answer.**" in section and "max |output difference|" in section
    assert "*Not measured yet: run `python -m experiments easy`.*" in text  # nothing else was run
    record = json.loads(next((tmp_path / "cache").glob("measure-batch-first-check-s0-*.json")).read_text())
    assert record["values"]["max_abs_output_difference"] < 1e-5
    assert record["code"] == "experiments.batch_first.batch_first_check()"
    # In this process from here on (each new process would import torch again).
    assert run.main(["--report-only", *args]) == 0
    assert report.read_text() == text  # the report is a function of the cache
    assert run.main(["nonsense", *args]) == 2
    assert capsys.readouterr().err.strip().startswith("python -m experiments: error: unknown suite 'nonsense'")


@pytest.mark.skipif(real_mnist_dir() is None, reason="real MNIST files not present (the report draws test digits)")
def test_committed_report_is_regenerated_exactly_from_the_committed_cache(tmp_path):
    committed = REPO / "docs" / "experiments.md"
    report = tmp_path / "experiments.md"
    proc = run_experiments(["--report-only", "--data-dir", str(real_mnist_dir()), "--report", str(report)])
    assert proc.returncode == 0, proc.stderr
    assert report.read_text() == committed.read_text()
    figures = sorted(p.name for p in (tmp_path / "experiments").glob("*.png"))
    assert len(figures) >= 4 and all((REPO / "docs" / "experiments" / name).exists() for name in figures)
    assert all(f"(experiments/{name})" in committed.read_text() for name in figures)
    assert Path(REPO / "docs" / "experiments" / "cache").is_dir()


def test_report_sections_are_templates_filled_with_the_suites_values(tmp_path):
    """The prose lives in experiments/report/*.md; a section names every value it uses (an unknown
    one is an error, not a blank) and places every figure its suite drew."""
    report = Report(tmp_path / "report.md")
    report.section("missing", suite="easy")
    report.missing("loss", "failed", reason="ValueError: boom")
    assert report.parts == ["*Not measured yet: run `python -m experiments easy`.*\n",
                            "## Cross-entropy or mean squared error?\n",
                            "*The loss section could not be written: ValueError: boom.*\n"]
    with pytest.raises(Exception, match="suite"):
        report.section("missing")  # {{ suite }} not given
    report.draw("unplaced", pyplot().subplots()[0])
    with pytest.raises(ValueError, match="does not place the figures unplaced"):
        report.section("failed", suite="x", reason="y")
    assert report.table(["a", "b"], [[1, 2]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |"


def test_parallel_runs_make_what_the_suites_ask_for_in_dependent_rounds(mnist_dir, tmp_path):
    """--jobs: the planning passes queue missing records, the queue runs `jobs` trainings at a time
    (each with its share of the cores), and a run that depends on others' results (a sweep's best)
    is made in a later round; the report's pass then finds everything cached."""
    c = ExperimentsConfig(data_dir=str(mnist_dir), cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"),
                          seeds=2, jobs=2)
    lab = Lab(c, ["cells"])
    tiny = ("--hidden-size", "4", "--num-layers", "1", "--epochs", "1", "--limit-train", "60", "--batch-size", "20",
            "--device", "cpu")
    passes = []

    def suite() -> None:
        sweep = {lr: experiments_lab.runs(lab, "cells", f"lr{lr}", tiny + ("--lr", lr), sweep=True)
                 for lr in ("0.001", "0.01")}
        passes.append(sorted(lr for lr, rs in sweep.items() if rs))
        if all(sweep.values()):
            best = max(sweep, key=lambda lr: sum(experiments_lab.accuracies(sweep[lr])))
            experiments_lab.runs(lab, "cells", f"best-lr{best}", tiny + ("--lr", best, "--epochs", "2"))

    lab.run_parallel(suite)
    assert passes == [[], ["0.001", "0.01"], ["0.001", "0.01"]]  # plan, then plan the best, then nothing missing
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert len(records) == 6  # 2 rates x 2 seeds, and the best at 2 seeds
    assert all(r["concurrent_runs"] == 2 and r["command"][-2:] == ["--threads", "1"] for r in records)
    assert lab.used == [] and not lab.pending
    suite()  # the report's pass: everything is cached, nothing runs
    assert len(lab.used) == 6 and len(list((tmp_path / "cache").glob("*.json"))) == 6
