"""`python -m experiments [SUITE ...]`: the experiments that answer the study note's questions.

Each suite trains real runs (`python -m dist_rnn.train`, several seeds) or takes a measurement, and
caches every record (command or code, seed, machine, commit and whether the tree was dirty, start
time, duration, results, curves) as one JSON file under docs/experiments/cache/. docs/experiments.md
and its figures are then regenerated from the cache alone, so every number in the report comes from
a recorded run: nothing is typed by hand. A cached record is reused; --rerun repeats it,
--report-only trains nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Optional

from dist_rnn.cli import ArgumentParser, add_dataclass_flags, describe, prog, run_cli
from dist_rnn.errors import UserError, first_line
from experiments import anatomy, batch_first, bidirectional, cells, dropout, easy, loss, theory, views
from experiments.lab import SELECTION_SEED, SWEEP_SEEDS, VAL_SIZE, ExperimentsConfig, Lab, Report, provenance
from experiments.plan import history, registrations, uncommitted

SUITES = {"easy": easy.suite, "anatomy": anatomy.suite, "theory": theory.suite, "batch_first": batch_first.suite,
          "dropout": dropout.suite, "bidirectional": bidirectional.suite, "cells": cells.suite, "views": views.suite,
          "loss": loss.suite}


def appendix(lab: Lab, report: Report) -> None:
    """Every record the report used: what ran, with which seed, where, when, and for how long."""
    rows = []
    for r in lab.records():
        what = " ".join(r["command"][3:]) if r["kind"] == "train" else r["code"]
        rows.append([r["suite"], r["name"], r["seed"], f"`{what}`", r["started"], r["seconds"],
                     f"{r['machine']['cores']} x {r['machine']['cpu'] or 'CPU'}", provenance(r)])
    report.section("appendix", cache_dir=lab.c.cache_dir, records_table=report.table(
        ["suite", "record", "seed", "command / code", "started", "seconds", "machine", "commit"], rows))


def threads(record: dict) -> str:
    """The CPU threads a training record's command asked for ('default' where it left them to the machine)."""
    command = record.get("command", [])
    return command[command.index("--threads") + 1] if "--threads" in command else "default"


def made_at(lab: Lab) -> str:
    """'commits a (3), b ? (2)': where the report's records were made, most used first."""
    counts = collections.Counter(provenance(r) for r in lab.records())
    return "commits " + ", ".join(f"{commit} ({n})" for commit, n in counts.most_common()) if counts else "no records"


def run_suites(lab: Lab, report: Report) -> tuple[dict[str, str], dict[str, list[dict]]]:
    """Every suite, in the report's order: the ones that failed (name -> why; their sections say so too),
    and the records each suite used."""
    failed: dict[str, str] = {}
    used: dict[str, list[dict]] = {}
    for name in SUITES:
        first = len(lab.used)
        try:
            SUITES[name](lab, report)
            if name in report.answers:  # the records behind its answer, for the closing table
                report.answers[name]["records"] = list(dict.fromkeys(r["name"] for _, r in lab.used[first:]))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - one suite's bug must not cost the other suites' runs
            if os.environ.get("DIST_RNN_DEBUG") and not lab.planning:
                traceback.print_exc()
            failed[name] = first_line(e)
            report.missing(name, "failed", reason=first_line(e))
        used[name] = list({id(r): r for _, r in lab.used[first:]}.values())
    return failed, used


def plan_section(lab: Lab, report: Report, used: dict[str, list[dict]]) -> None:
    """When each section entered the committed plan, how many of its records came before, its amendments."""
    rows, versions = [], history(lab.plan.path)
    for section in lab.plan.sections:
        found = registrations(versions, section, [r["started"] for r in used.get(section, [])])
        first = found["registered"]
        rows.append([section, f"{first.commit} ({first.date.date().isoformat()})" if first else "not committed",
                     f"{found['before']} of {found['records']}",
                     "; ".join(f"{commit} ({date}): {subject}" for commit, date, subject in found["amendments"])
                     or "none"])
    report.section("plan", plan=lab.plan, table=report.table(
        ["section", "registered (commit, date)", "its records made before that", "amendments (commit: reason)"],
        rows))


def prune(lab: Lab, suites: list[str], report: Report) -> None:
    """Delete the cached records that the whole report, just regenerated, did not use (only when every
    section is complete: a missing one would lose records it needs)."""
    if sorted(suites) != sorted(SUITES):
        raise UserError("`prune` needs every suite (it deletes what the whole report does not use): name none")
    if report.absent:
        raise UserError(f"`prune` deletes nothing while sections are missing: {', '.join(report.absent)}")
    used = {path.resolve() for path, _ in lab.used}
    unused = [path for path in sorted(lab.cache.glob("*.json")) if path.resolve() not in used]
    for path in unused:
        path.unlink()
    print(f"pruned {len(unused)} cached records the report does not use")


def experiments(c: ExperimentsConfig, suites: list[str]) -> None:
    """Run (or take from the cache) the selected suites, then regenerate the whole report."""
    lab = Lab(c, suites)
    if c.jobs > 1 and not c.report_only:
        lab.run_parallel(lambda: run_suites(lab, Report(Path(c.report), draft=True)))
    report, failed = render(lab, Path(c.report))
    report.write()
    print(f"wrote {report.path} and {len(report.written)} figures in {report.figures}")
    if c.prune:
        prune(lab, suites, report)
    if failed:
        raise UserError(f"suites that failed (their cached runs are kept): "
                        f"{', '.join(f'{name} ({why})' for name, why in failed.items())}")


def render(lab: Lab, path: Path) -> tuple[Report, dict[str, str]]:
    """The whole report from the lab's records (written by the caller), and the suites that failed."""
    c = lab.c
    report = Report(path)
    failed, used = run_suites(lab, report)
    plan_section(lab, report, used)
    report.closing()
    appendix(lab, report)
    # The header counts the records as they are now, after this invocation's runs: the same cache
    # gives the same report, whenever it is rendered.
    records = lab.records()
    concurrent = [r for r in records if r.get("concurrent_runs", 1) > 1]
    report.section("header", at_start=True, cache_dir=c.cache_dir, seeds=c.seeds, sweep_seeds=min(c.seeds, SWEEP_SEEDS),
                   val_size=int(VAL_SIZE), selection_seed=SELECTION_SEED, plan=lab.plan, plan_path=c.plan,
                   total_seconds=sum(r.get("seconds", 0) for r in records), records=len(records),
                   concurrent=len(concurrent), jobs=max((r["concurrent_runs"] for r in concurrent), default=1),
                   threads=sorted({threads(r) for r in concurrent}), made_at=made_at(lab))
    return report, failed


def check(c: ExperimentsConfig, suites: list[str]) -> None:
    """`--check`: the plan's own problems, then the report rendered from the cache into a scratch folder:
    every suite must render (an unplanned, degenerate or repeated test fails its suite), and with every
    suite, the report must equal the committed one byte for byte. Trains nothing."""
    lab = Lab(dataclasses.replace(c, report_only=True), suites)
    problems = lab.plan.problems()
    if uncommitted(lab.plan.path):
        problems.append(f"{c.plan} has changes no commit holds: commit them, the subject saying why (the report "
                        f"lists each change to a section as an amendment, from git's history)")
    with tempfile.TemporaryDirectory() as scratch:
        report, failed = render(lab, Path(scratch) / Path(c.report).name)
        problems += [f"suite {name} ({why})" for name, why in failed.items()]
        problems += [f"section {name} lacks records" for name in report.absent if name not in failed]
        if sorted(suites) == sorted(SUITES) and not failed:
            report.write()
            committed = Path(c.report).read_bytes() if Path(c.report).exists() else b""
            if report.path.read_bytes() != committed:
                problems.append(f"{c.report} is not what the plan and the cache give: regenerate it "
                                f"(python -m experiments --report-only)")
    for problem in problems:
        print(f"plan check: {problem}", file=sys.stderr)
    if problems:
        raise UserError(f"the plan check failed: {len(problems)} problem{'s' if len(problems) > 1 else ''} above")
    print(f"plan check passed: {len(suites)} suites render only planned tests, and no decision reads the test set")


def main(argv: Optional[list[str]] = None) -> int:
    parser = ArgumentParser(prog=prog("experiments"),
                            description=describe(__doc__))
    parser.add_argument("suites", nargs="*", metavar="SUITE", help=f"suites to run (default: all): {', '.join(SUITES)}")
    add_dataclass_flags(parser, ExperimentsConfig)

    def command() -> None:
        args = vars(parser.parse_args(argv))
        suites = args.pop("suites") or list(SUITES)
        unknown = [s for s in suites if s not in SUITES]
        if unknown:
            raise UserError(f"unknown suite {unknown[0]!r} (choose from {', '.join(SUITES)})")
        c = ExperimentsConfig(**args)
        if c.seeds < 1 or c.jobs < 1:
            raise UserError(f"`seeds` and `jobs` must be >= 1, got `seeds`={c.seeds} and `jobs`={c.jobs}")
        (check if c.check else experiments)(c, suites)

    return run_cli(prog("experiments"), command)


if __name__ == "__main__":
    raise SystemExit(main())
