"""The lab (experiments/): records are cached with what produced them, reused, and the report is
regenerated from the cache alone (the committed docs/experiments.md included)."""

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml
from conftest import REPO, real_mnist_dir, run_module

from dist_rnn.plot import pyplot
from experiments import easy, plan, run
from experiments import lab as experiments_lab
from experiments.bidirectional import half_probes
from experiments.lab import ExperimentsConfig, Lab, Report


def run_experiments(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m experiments ARGS` (experiments/run.py), a process of its own (conftest.run_module)."""
    return run_module("experiments.run", args)


@pytest.fixture(autouse=True)
def warm_training(monkeypatch):
    """The lab's trainings, each `python -m dist_rnn.train ...` still, forked from the warm interpreter
    (tests/warm.py) instead of importing torch again (4 s of CPU each)."""
    def run_training(command: list[str]) -> subprocess.CompletedProcess:
        assert command[:3] == [sys.executable, "-m", "dist_rnn.train"], command
        return run_module("dist_rnn.train", command[3:])
    monkeypatch.setattr(experiments_lab, "run_training", run_training)


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


needs_mnist = pytest.mark.skipif(real_mnist_dir() is None, reason="real MNIST files not present (the report "
                                                                     "draws test digits)")


def check_args(*args: str) -> list[str]:
    """`python -m experiments --check` on the committed cache, plan and report (paths as the report names
    them: run from the repository's root)."""
    return ["--check", "--data-dir", str(real_mnist_dir()), "--cache-dir", "docs/experiments/cache",
            "--report", "docs/experiments.md", "--plan", "experiments/plan.yaml", *args]


@needs_mnist
def test_the_committed_plan_and_report_pass_the_check_and_regenerate_exactly(capsys, monkeypatch):
    """--check renders the whole report from the committed cache and plan: every section renders only
    planned tests, no decision reads a test figure, and the result equals docs/experiments.md byte for byte."""
    monkeypatch.chdir(REPO)
    assert run.main(check_args()) == 0, capsys.readouterr().err
    assert "plan check passed: 9 suites" in capsys.readouterr().out
    committed = (REPO / "docs" / "experiments.md").read_text()
    figures = [line.split("](experiments/")[1].split(")")[0] for line in committed.splitlines() if "](experiments/" in line]
    assert len(figures) >= 4 and all((REPO / "docs" / "experiments" / name).exists() for name in figures)


@needs_mnist
@pytest.mark.parametrize("change, message", [
    (lambda p: p["sections"]["views"]["comparisons"].pop(), "the report renders comparison 'long_permuted_vs_pixel', "
                                                            "which the plan's family does not declare"),
    (lambda p: p["sections"]["views"]["comparisons"].append({"id": "reversed_vs_pixel", "a": "reversed", "b": "pixel"}),
     "comparison 'reversed_vs_pixel' is degenerate"),
    (lambda p: p["sections"]["views"]["comparisons"].append({"id": "again", "a": "row", "b": "column",
                                                             "shared_rates": True}),
     "'column_vs_row' and 'again' are the same test"),
    (lambda p: p["sections"]["views"]["decisions"][-1].update(reads="best_test_accuracy"),
     "the decision 'longer budget' reads a test figure (best_test_accuracy"),
    (lambda p: p["sections"]["views"]["comparisons"][0].pop("mcnemar"),
     "the report shows McNemar pairs for 'column_vs_row', which the plan does not declare"),
], ids=["unplanned", "degenerate", "twice", "test-read-stopping-rule", "unplanned-mcnemar"])
def test_the_check_fails_on_a_plan_that_breaks_its_rules(tmp_path, capsys, monkeypatch, change, message):
    """A test copy of the plan: the views section renders a comparison it no longer declares, declares a
    test of two constant arms, the same test twice, a stopping rule that reads the test set, or shows
    McNemar pairs the plan does not ask for."""
    monkeypatch.chdir(REPO)
    copy = yaml.safe_load((REPO / "experiments" / "plan.yaml").read_text())
    change(copy)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(copy))
    args = check_args("views")
    args[args.index("--plan") + 1], args[args.index("--report") + 1] = str(tmp_path / "plan.yaml"), str(tmp_path / "r.md")
    assert run.main(args) != 0
    err = capsys.readouterr().err
    assert message in err and "the plan check failed" in err.strip().splitlines()[-1], err


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


def test_statistics_say_mean_sd_and_call_a_difference_or_an_equivalence_only_where_the_tests_do():
    assert experiments_lab.mean_std([0.97, 0.98, 0.99]) == "98.00 ± 1.00"  # sample standard deviation
    assert experiments_lab.mean_std([0.5]) == "50.00 ± 0.00"
    welch = functools.partial(plan.welch, bound=0.5, alpha=0.05)
    same = welch([0.97, 0.98, 0.99], [0.99, 0.98, 0.97])
    assert same.diff == pytest.approx(0) and not same.beyond and not same.equivalent  # +-1 point: too wide
    apart = welch([0.97, 0.971, 0.972, 0.973, 0.974], [0.95, 0.951, 0.952, 0.953, 0.954])
    assert apart.diff == pytest.approx(2.0) and apart.beyond and 0 < apart.margin < 1
    # two seeds each, overlapping: Welch's interval (t = 12.7 at one degree of freedom) spans zero
    assert not welch([0.97, 0.98], [0.96, 0.975]).beyond
    assert not welch([0.97], [0.96]).beyond  # one seed: no spread, no claim
    # seeds 0.1 point apart, spread 0.16: equivalent within 0.5 points; the same gap with wider seeds is not
    close = welch([0.969, 0.970, 0.971, 0.972, 0.973], [0.968, 0.969, 0.970, 0.971, 0.972])
    assert close.equivalent and not close.beyond and close.words.startswith("equivalent within ±0.5 points: TOST")
    tight = welch([0.9701, 0.9702, 0.9703, 0.9704, 0.9705], [0.9691, 0.9692, 0.9693, 0.9694, 0.9695])
    assert tight.beyond and tight.equivalent and tight.short == "beyond the spread, but within ±0.5 points"
    wide_arms = [0.96, 0.97, 0.98, 0.975, 0.965], [0.959, 0.969, 0.979, 0.974, 0.964]
    wide = welch(*wide_arms)
    assert not wide.equivalent and wide.words.startswith("inconclusive") and "80 % power only" in wide.words
    assert "90 % power only" in plan.welch(*wide_arms, bound=0.5, alpha=0.05, power=0.9).words  # the plan's power
    # the detectable difference: (t_0.975 + t_0.8) standard errors; 8 df: 2.306 + 0.889
    assert wide.detectable == pytest.approx(3.195 * (2 * 0.0079057 ** 2 / 5) ** 0.5 * 100, rel=0.01)
    # Student's t tail: tables give 0.0367 at t = 2, 10 df (one-sided), and 0.025 at t = 12.706, 1 df
    assert plan.t_sf(2.0, 10) == pytest.approx(0.03670, abs=1e-5)
    assert plan.t_sf(12.706, 1) == pytest.approx(0.025, abs=1e-4) and plan.t_sf(-12.706, 1) == pytest.approx(0.975)
    assert plan.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    # a template reads the verdict as an attribute (a dict's `.clear` would be dict.clear, always true)
    text = jinja2.Template("{% if c.beyond %}ahead{% else %}within{% endif %}").render(c=same)
    assert text == "within"
    one_class = {"analysis": {"confusion": [[0] * 3 + [10] + [0] * 6 for _ in range(10)]}}
    learned = {"analysis": {"confusion": [[10 if i == j else 0 for j in range(10)] for i in range(10)]}}
    assert experiments_lab.collapsed(one_class) and not experiments_lab.collapsed(learned)
    records = [{"results": {"test_accuracy": 0.1}, **one_class}, {"results": {"test_accuracy": 0.9}, **learned}]
    assert experiments_lab.accuracy_cell(records) == "50.00 ± 56.57 (1 of 2 collapsed)"


def test_a_family_is_the_plans_holm_corrected_and_refuses_what_the_plan_forbids():
    """Holm's step-down over the planned family: the k-th smallest of m p-values times (m - k + 1), never
    below the one before; shared-rate controls join the family; an undeclared comparison, a degenerate one
    (two constant arms) or the same test twice is a PlanViolation."""
    assert list(plan.holm_adjust({"a": 0.03, "b": 0.4, "c": 0.001}).values()) == pytest.approx([0.06, 0.4, 0.003])
    assert plan.p_text(0.0004) == "p < 0.001" and plan.p_text(0.0005) == "p = 0.001"  # never "p = 0.000"
    arms = {"x": [0.97, 0.971, 0.972], "y": [0.95, 0.951, 0.953], "x@0.01": [0.96, 0.962, 0.961],
            "y@0.003": [0.955, 0.957, 0.956],
            "flat": [0.1135] * 3, "also flat": [0.1135] * 3}
    planned = [{"id": "x_vs_y", "a": "x", "b": "y", "shared_rates": True}]
    family = plan.Family("s", planned, arms, 0.5, 0.05, rates={"x": "0.003", "y": "0.01"})
    assert set(family.comparisons) == {"x_vs_y", "x_vs_y@0.003", "x_vs_y@0.01"}  # x@0.003 is x itself
    with pytest.raises(plan.PlanViolation, match="needs arm 'y@0.003'"):  # a control not measured
        plan.Family("s", planned, {k: v for k, v in arms.items() if k != "y@0.003"}, 0.5, 0.05,
                    rates={"x": "0.003", "y": "0.01"})
    with pytest.raises(plan.PlanViolation, match="does not declare"):
        family["x_vs_flat"]
    assert family.x_vs_y.family == 3 and family.x_vs_y.p_holm >= family.x_vs_y.p
    assert "both at Adam 0.003" in family.shared("x_vs_y") and "both at Adam 0.01" in family.shared("x_vs_y")
    with pytest.raises(plan.PlanViolation, match="degenerate"):
        plan.Family("s", [{"id": "d", "a": "flat", "b": "also flat"}], arms, 0.5, 0.05)
    with pytest.raises(plan.PlanViolation, match="same test"):
        plan.Family("s", [{"id": "one", "a": "x", "b": "y"}, {"id": "two", "a": "y", "b": "x"}], arms, 0.5, 0.05)


def test_a_section_that_answers_a_question_gets_a_row_of_the_closing_table(tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "q.md").write_text('## Why?\n\n{{ figure("f", "F.") }}\n\n**Answer.** {{ n }}.\n\n'
                                    '{% macro answer() %}Because {{ n }}.{% endmacro %}\n')
    (templates / "plain.md").write_text("## Notes\n\nNo question here.\n")
    (templates / "closing.md").write_text((Report.TEMPLATES / "closing.md").read_text())
    monkeypatch.setattr(Report, "TEMPLATES", templates)
    report = Report(tmp_path / "report.md")
    report.draw("f", pyplot().subplots()[0])
    report.section("q", n=42)
    report.section("plain")
    assert report.parts[0].count("![F.](experiments/f.png)") == 1  # the answer macro places no figure twice
    report.answers["q"]["records"] = ["run-a"]
    report.closing()
    assert "| Why? | Because 42. | [f](experiments/f.png) | `run-a` |" in report.parts[-1]
    assert "Notes" not in report.parts[-1]


def test_a_cached_run_lacking_an_analysis_asked_for_now_is_made_again(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiments_lab, "PROBE_SAMPLES", 200)
    c = ExperimentsConfig(data_dir=str(mnist_dir), cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"),
                          seeds=1)
    tiny = ("--hidden-size", "4", "--num-layers", "1", "--epochs", "1", "--limit-train", "60", "--batch-size", "20",
            "--device", "cpu")
    plain = Lab(c, ["easy"]).train("easy", "tiny", tiny, 0)
    assert "rows_read_head" not in plain["analysis"]
    # --report-only cannot make it: the half-analysed record counts as missing, not as half an answer
    only = Lab(ExperimentsConfig(**{**c.__dict__, "report_only": True}), ["easy"])
    assert only.train("easy", "tiny", tiny, 0, functools.partial(experiments_lab.rows_read, only)) is None
    lab = Lab(c, ["easy"])
    analysed = lab.train("easy", "tiny", tiny, 0, functools.partial(experiments_lab.rows_read, lab))
    head = analysed["analysis"]["rows_read_head"]
    assert len(head) == 28 and head[-1] == pytest.approx(analysed["analysis"]["test_accuracy"])
    assert analysed["analysis"]["rows_read_probe"]["rows"] == list(range(1, 29, 3))
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # the same record, made again in place


def test_a_longer_run_continues_the_shorter_ones_directory_to_the_same_record(mnist_dir, tmp_path, monkeypatch):
    """`extends`: 10 epochs made from a copy of a 5-epoch run's directory are the 10 epochs from scratch
    (same evaluations, per-image results and loss curve), the shorter run's directory is left as it was;
    a run with another thread count starts again; a shorter run that differs in more than its epochs is
    refused at once."""
    monkeypatch.setattr(experiments_lab, "PROBE_SAMPLES", 200)

    def lab(name: str, jobs: int = 1) -> Lab:
        return Lab(ExperimentsConfig(data_dir=str(mnist_dir), cache_dir=str(tmp_path / name / "cache"),
                                     runs_dir=str(tmp_path / name / "runs"), seeds=1, jobs=jobs), ["easy"])

    # 100 training images in batches of 20: an epoch is 5 steps, and the loss is logged every 25,
    # so 5 epochs end on a logging step (as the lab's long runs do)
    tiny = ("--hidden-size", "4", "--num-layers", "1", "--limit-train", "100", "--batch-size", "20", "--eval-every",
            "5", "--device", "cpu", "--epochs")
    scratch = lab("scratch").train("easy", "tiny", tiny + ("10",), 0)
    went_on = lab("went-on")
    short = went_on.train("easy", "tiny-short", tiny + ("5",), 0)
    short_dir = Path(short["command"][short["command"].index("--out-dir") + 1])
    before = {p.name: p.read_bytes() for p in short_dir.rglob("*") if p.is_file()}
    longer = went_on.train("easy", "tiny", tiny + ("10",), 0, extends=tiny + ("5",))
    # (only code that no change has touched since the shorter run's commit may continue it)
    if not experiments_lab.machine()["dirty"]:
        assert longer["extends"] == short_dir.name and longer["resumed_from_step"] == 25
        assert longer["command"][longer["command"].index("--resume") + 1] == "auto"
    assert [e["step"] for e in longer["evals"]] == list(range(5, 51, 5))
    for key in ("evals", "curve"):
        assert longer[key] == scratch[key]
    assert longer["analysis"]["test_correct"] == scratch["analysis"]["test_correct"]
    assert longer["results"]["test_accuracy"] == scratch["results"]["test_accuracy"]
    assert {p.name: p.read_bytes() for p in short_dir.rglob("*") if p.is_file()} == before
    # with 2 jobs a run gets 1 thread, the shorter run had them all: not the same run, so it starts again
    shutil.copytree(tmp_path / "went-on" / "cache", tmp_path / "threads" / "cache")
    shutil.copytree(tmp_path / "went-on" / "runs", tmp_path / "threads" / "runs")
    (next((tmp_path / "threads" / "cache").glob("train-tiny-s0-*.json"))).unlink()
    again = lab("threads", jobs=2).train("easy", "tiny", tiny + ("10",), 0, extends=tiny + ("5",))
    assert "extends" not in again and again["command"][again["command"].index("--resume") + 1] == "none"
    for args, extends in ((tiny + ("10", "--lr", "0.1"), tiny + ("5", "--lr", "0.2")),  # not only the epochs
                          (tiny + ("10",), tiny + ("20",)), (tiny + ("10",), tiny + ("10",)),  # not fewer
                          (tiny + ("10", "--lr-schedule", "cosine"), tiny + ("5", "--lr-schedule", "cosine"))):
        with pytest.raises(ValueError, match="fewer epochs"):  # checked before any record is looked up
            went_on.train("easy", "tiny", args, 0, extends=extends)


def test_mcnemar_counts_the_images_only_one_run_got_right_and_tests_them_exactly():
    def record(right: list[bool]) -> dict:
        return {"analysis": {"test_correct": experiments_lab.np.packbits(right).tobytes().hex()}}

    a = [True] * 12 + [False] * 4  # 16 test images
    b = [True] * 2 + [False] * 10 + [True] * 4
    (pair,) = experiments_lab.mcnemar([record(a)], [record(b)])
    assert (pair.only_a, pair.only_b) == (10, 4)
    assert pair.p == pytest.approx(2 * sum(experiments_lab.math.comb(14, i) for i in range(5)) / 2 ** 14)  # 0.180
    (same,) = experiments_lab.mcnemar([record(a)], [record(a)])
    assert (same.only_a, same.only_b, same.p) == (0, 0, 1.0)
    (lopsided,) = experiments_lab.mcnemar([record([True] * 10 + [False] * 6)], [record([False] * 16)])
    assert lopsided.p == pytest.approx(2 / 2 ** 10)
    assert experiments_lab.mcnemar_text([pair, lopsided]) == \
        "10/4 (p = 0.180), 10/0 (p = 0.002); 1 of 2 pairs below 0.05"
    (tiny,) = experiments_lab.mcnemar([record([True] * 12)], [record([False] * 12)])  # p = 2 / 2 ** 12
    assert experiments_lab.mcnemar_text([tiny]) == "12/0 (p < 0.001); 1 of 1 pairs below 0.05"


def test_selection_chooses_a_rate_on_the_validation_split_with_seeds_of_its_own(mnist_dir, tmp_path, monkeypatch):
    """The sweep's runs hold out a validation split and use the selection seeds (never a headline
    seed); the rate chosen is the one with the best mean validation accuracy; every run says which
    test images it got right."""
    monkeypatch.setattr(experiments_lab, "PROBE_SAMPLES", 200)
    monkeypatch.setattr(experiments_lab, "VAL_SIZE", "40")
    c = ExperimentsConfig(data_dir=str(mnist_dir), cache_dir=str(tmp_path / "cache"), runs_dir=str(tmp_path / "runs"),
                          seeds=1)
    tiny = ("--hidden-size", "4", "--num-layers", "1", "--epochs", "1", "--limit-train", "160", "--batch-size", "20",
            "--device", "cpu", "--lr")
    selection = experiments_lab.select(Lab(c, ["cells"]), "cells", "tiny", lambda lr: tiny + (lr,), ("0.0001", "0.05"))
    (low,), (high,) = selection.sweep["0.0001"], selection.sweep["0.05"]
    assert [low["seed"], high["seed"]] == [experiments_lab.SELECTION_SEED] * 2
    assert all(r["command"][r["command"].index("--val-size") + 1] == "40" for r in (low, high))
    assert all(r["results"]["val_samples"] == 40 and len(r["analysis"]["test_correct"]) > 0 for r in (low, high))
    # the winning edge is extended one step (the top doubled, the bottom halved); a tie is not
    low_val, high_val = selection.val("0.0001")[0], selection.val("0.05")[0]
    assert selection.extended == (None if low_val == high_val else "0.1" if high_val > low_val else "5e-05")
    assert sorted(selection.sweep, key=float) == list(selection.sweep)
    best = max(selection.sweep, key=lambda lr: selection.val(lr)[0])
    assert selection.chosen == best and selection.cell(best).endswith("(chosen)")


def test_the_baselines_sweep_table_shows_a_rate_the_rule_added():
    """An MLP whose grid the selection rule extended to 0.02 and chose it there: the table gets that row,
    '-' for logistic regression (not extended), '(chosen)' on the MLP's cell."""
    def values(*accs: float) -> list[dict]:
        return [{"val_accuracy": a} for a in accs]

    grid = {lr: values(0.9, 0.92) for lr in easy.BASELINE_RATES}
    base = {"logreg": (grid, "0.003", []), "mlp": ({**grid, "0.02": values(0.95, 0.97)}, "0.02", [])}
    rows = easy.baseline_sweep_table(Report(Path("unused.md")), base).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| {lr}" for lr in (*easy.BASELINE_RATES, "0.02")]
    assert rows[-1] == "| 0.02 | - | 96.00 ± 1.41 (chosen) |"
    assert rows[2] == "| 0.003 | 91.00 ± 1.41 (chosen) | 91.00 ± 1.41 |"


def test_prune_deletes_only_the_records_the_whole_report_does_not_use(tmp_path):
    """From a copy of the committed cache plus one stray record: the report, regenerated, is the same,
    and only the stray record is gone; with a section missing, nothing is deleted."""
    if real_mnist_dir() is None:
        pytest.skip("the report's analyses read the real MNIST files")
    cache = tmp_path / "cache"
    shutil.copytree(REPO / "docs" / "experiments" / "cache", cache)
    stray = cache / "train-stray-s0-0123456789.json"
    some_record = next(cache.glob("train-*.json")).read_text()
    stray.write_text(some_record)
    kept = sorted(p.name for p in cache.glob("*.json") if p != stray)
    report = tmp_path / "out" / "report.md"
    args = ["--report-only", "--cache-dir", str(cache), "--report", str(report), "--data-dir", str(real_mnist_dir())]
    done = run_experiments(args + ["--prune"])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in cache.glob("*.json")) == kept and "pruned 1 cached records" in done.stdout
    committed = (REPO / "docs" / "experiments.md").read_text()
    assert report.read_text().replace(str(cache), "docs/experiments/cache") == committed
    (cache / kept[0]).unlink()  # now a section lacks a record: nothing more may go
    stray.write_text(some_record)
    refused = run_experiments(args + ["--prune"])
    assert refused.returncode != 0 and "deletes nothing while sections are missing" in refused.stderr
    assert stray.exists()
