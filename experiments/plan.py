"""The pre-registration (experiments/plan.yaml): each section's question, its family of comparisons
(tested together, Holm-corrected), the equivalence margin, and the decisions its runs follow. A suite
renders only the comparisons its family declares; `python -m experiments --check` refuses a plan or a
report that breaks its rules."""

from __future__ import annotations

import dataclasses
import datetime
import math
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

from dist_rnn.errors import UserError

PLAN = Path(__file__).parent / "plan.yaml"
T = TypeVar("T")
ALPHA, POWER = 0.05, 0.8  # the tests' level and the power figure's, where plan.yaml names none
TESTS = ("welch",)  # the difference test each comparison gets; TOST and the power figure come with it


class PlanViolation(ValueError):
    """A comparison, test or decision the plan's rules forbid (what `--check` reports)."""


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) in points; the half-width of its 95 % confidence interval and Welch's two-sided p
    (adjusted by Holm over the family: `p_holm`); the TOST p of equivalence within +-`bound` points (Holm
    too); and `detectable`, the smallest difference the seeds had a `power` chance to find (two-sided, at
    the family's Bonferroni level alpha/m, a little stricter than Holm's). A difference is claimed where
    p_holm < alpha, an equivalence where p_tost_holm < alpha (both can hold: a real but small difference);
    anything else is inconclusive, and the report says how large an effect it could have missed. `se` and
    `df`: Welch's standard error (points) and degrees of freedom."""

    diff: float
    margin: float
    p: float
    p_holm: float = float("nan")
    family: int = 1
    p_tost: float = 1.0
    p_tost_holm: float = 1.0
    bound: float = float("nan")
    detectable: float = float("nan")
    alpha: float = ALPHA
    power: float = POWER
    se: float = float("nan")
    df: float = float("nan")

    @property
    def beyond(self) -> bool:
        return self.p_holm < self.alpha

    @property
    def equivalent(self) -> bool:
        return self.p_tost_holm < self.alpha

    @property
    def short(self) -> str:
        """The verdict alone: 'beyond the spread' (and, where TOST says so too, 'but within ±0.5 points'),
        'equivalent within ±0.5 points' or 'inconclusive'."""
        within = f"within ±{self.bound:g} points"
        if self.beyond:
            return f"beyond the spread, but {within}" if self.equivalent else "beyond the spread"
        return f"equivalent {within}" if self.equivalent else "inconclusive"

    @property
    def cell(self) -> str:
        """For a table: the difference, its 95 % interval and the verdict ('+0.25 ± 0.60 (inconclusive: ...)')."""
        return f"{self.diff:+.2f} ± {self.margin:.2f} ({self.words})"

    @property
    def words(self) -> str:
        """The verdict in the report's words, with the corrected p it follows."""
        over = f"Holm over {self.family}" if self.family > 1 else "one comparison"
        if self.beyond and self.equivalent:
            return (f"beyond the spread: {p_text(self.p_holm)}, but within ±{self.bound:g} points: TOST "
                    f"{p_text(self.p_tost_holm)}, {over}")
        if self.beyond:
            return f"beyond the spread: {p_text(self.p_holm)}, {over}"
        if self.equivalent:
            return f"equivalent within ±{self.bound:g} points: TOST {p_text(self.p_tost_holm)}, {over}"
        missed = (f"{self.power * 100:.0f} % power only for {self.detectable:.2f} points or more"
                  if math.isfinite(self.detectable) else "no spread to test")
        return f"inconclusive: {p_text(self.p_holm)}, TOST {p_text(self.p_tost_holm)} (±{self.bound:g}), {over}; {missed}"


def p_text(p: float) -> str:
    """A p-value as the report writes it: three decimals, and 'p < 0.001' rather than a false 'p = 0.000'."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def welch(a: list[float], b: list[float], bound: float, alpha: float, power: float = POWER) -> Comparison:
    """Accuracies `a` against `b` over seeds (fractions; the figures in points): Welch's interval and p,
    the TOST p of equivalence within +-`bound` points, and the smallest difference detectable with
    `power` (alone, each p is its own correction: Family corrects a family's)."""
    diff = (statistics.mean(a) - statistics.mean(b)) * 100
    if len(a) < 2 or len(b) < 2:  # no spread to measure on one side: no claim
        return Comparison(diff, float("nan"), 1.0, 1.0, bound=bound, alpha=alpha, power=power)
    va, vb = statistics.variance(a) * 1e4 / len(a), statistics.variance(b) * 1e4 / len(b)
    if va + vb == 0:  # every seed alike on both sides: the plan refuses such a test (degenerate)
        p, p_tost = (0.0 if diff else 1.0), (0.0 if abs(diff) < bound else 1.0)
        return Comparison(diff, 0.0, p, p, p_tost=p_tost, p_tost_holm=p_tost, bound=bound, detectable=0.0,
                          alpha=alpha, power=power)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = min(1.0, 2 * t_sf(abs(diff) / se, df))
    p_tost = max(t_sf((diff + bound) / se, df), t_sf((bound - diff) / se, df))
    return Comparison(diff, t_quantile(0.975, df) * se, p, p, p_tost=p_tost, p_tost_holm=p_tost, bound=bound,
                      detectable=detectable(se, df, alpha, power), alpha=alpha, power=power, se=se, df=df)


def detectable(se: float, df: float, alpha: float, power: float) -> float:
    """The smallest difference a two-sided Welch test at level `alpha` finds with probability `power`:
    (t_{1 - alpha/2} + t_{power}) standard errors."""
    return (t_quantile(1 - alpha / 2, df) + t_quantile(power, df)) * se


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with `df` (not necessarily whole) degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2, 0.5)
    return tail if t >= 0 else 1.0 - tail


def incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's
    method, as in Numerical Recipes' betacf), to about 1e-12."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only: use the symmetry
        return 1.0 - incomplete_beta(1.0 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-13:
            break
    return front * h / a


def t_quantile(q: float, df: float) -> float:
    """The t with P(T <= t) = q (q >= 0.5), by bisection on t_sf."""
    low, high = 0.0, 1000.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_sf(mid, df) > 1 - q else (low, mid)
    return (low + high) / 2


def holm_adjust(ps: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: the k-th smallest p times (m - k + 1), never below the one
    before, at most 1 (the family's chance of any false claim held to alpha)."""
    m, adjusted, running = len(ps), {}, 0.0
    for k, (key, p) in enumerate(sorted(ps.items(), key=lambda kv: kv[1])):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[key] = running
    return {key: adjusted[key] for key in ps}


class Family:
    """A section's planned comparisons, computed from the arms its suite measured (arm -> values over
    seeds, at least two) and corrected together. Reading a comparison the plan does not declare is a
    PlanViolation, and so is a planned one whose arms are both constant (it can only say p = 0 or 1),
    that repeats another's test, or that compares arms at different rates without `shared_rates`."""

    def __init__(self, section: str, planned: list[dict[str, Any]], arms: dict[str, list[float]], bound: float,
                 alpha: float, rates: Optional[dict[str, str]] = None, power: float = POWER):
        self.section, rates = section, rates or {}
        self.planned = {entry["id"]: entry for entry in planned}
        self.aliases: dict[str, str] = {}  # a shared-rate test whose runs are its own-rate test's
        self.untestable: dict[str, str] = {}  # a shared-rate test whose arms are both constant there
        found: dict[str, Comparison] = {}
        seen: dict[tuple, str] = {}
        arms = dict(arms)
        for arm, lr in rates.items():  # an arm at its own chosen rate is the arm itself
            arms.setdefault(f"{arm}@{lr}", arms.get(arm, []))
        for name, a, b in expand(section, planned, rates):
            for arm in (a, b):
                if len(arms.get(arm, [])) < 2:
                    raise PlanViolation(f"{section}: comparison {name!r} needs arm {arm!r} at two seeds or more, "
                                        f"which the suite does not measure (it measures {', '.join(arms)})")
            if len(set(arms[a])) == 1 and len(set(arms[b])) == 1:
                if "@" in name:  # a control the plan did not name one by one: said, not tested
                    self.untestable[name] = f"{a} and {b} are each constant across seeds"
                    continue
                raise PlanViolation(f"{section}: comparison {name!r} is degenerate: {a!r} and {b!r} are each "
                                    f"constant across seeds, so its p can only be 0 or 1")
            key = (tuple(sorted(arms[a])), tuple(sorted(arms[b])))
            twin = seen.get(key) or seen.get(key[::-1])
            if twin and twin == name.split("@")[0]:  # at a shared rate, the same runs as at the own rates
                self.aliases[name] = twin
                continue
            if twin:
                raise PlanViolation(f"{section}: comparisons {twin!r} and {name!r} are the same test "
                                    f"(the same values on both sides)")
            seen[key] = name
            found[name] = welch(arms[a], arms[b], bound, alpha, power)
        m = len(found)
        holm_p = holm_adjust({k: c.p for k, c in found.items()})
        tost_p = holm_adjust({k: c.p_tost for k, c in found.items()})
        self.comparisons = {k: dataclasses.replace(c, p_holm=holm_p[k], p_tost_holm=tost_p[k], family=m,
                                                   detectable=detectable(c.se, c.df, alpha / m, power)
                                                   if math.isfinite(c.se) and c.se > 0 else c.detectable)
                            for k, c in found.items()}

    def at(self, name: str) -> dict[str, Comparison]:
        """The comparison's shared-rate tests: rate -> its test (the own-rate test where the runs are the same)."""
        keys = sorted((key for key in [*self.comparisons, *self.aliases] if key.startswith(f"{name}@")),
                      key=lambda key: float(key.rsplit("@", 1)[1]))
        return {key.rsplit("@", 1)[1]: self[key] for key in keys}

    def shared(self, name: str) -> str:
        """For prose: the comparison again at each arm's chosen rate for both, and whether its verdict
        holds there ('' where both arms ran at one rate)."""
        own, at = self[name], self.at(name)
        each = [f"both at Adam {lr}: {c.diff:+.2f} ± {c.margin:.2f} points, {c.words}" for lr, c in at.items()]
        each += [f"both at Adam {key.rsplit('@', 1)[1]}: no test ({why})" for key, why in self.untestable.items()
                 if key.startswith(f"{name}@")]
        if not each:
            return ""
        holds = [lr for lr, c in at.items() if verdict(c) == verdict(own)]
        if at and len(holds) == len(at) and verdict(own) == "inconclusive":
            summary = "inconclusive at every rate"
        elif at and len(holds) == len(at):
            summary = "the verdict holds at every shared rate"
        elif holds:
            summary = f"the verdict holds at Adam {' and '.join(holds)} only"
        else:
            summary = ("the verdict holds at no shared rate, so at the arms' own rates it may be the rates' as much as "
                       "the treatment's")
        return f"{'; '.join(each)}; {summary}"

    def paired(self, name: str) -> None:
        """Refuse McNemar pairs beside a comparison whose plan entry does not ask for them (`mcnemar: true`)."""
        if not self.planned.get(name, {}).get("mcnemar"):
            raise PlanViolation(f"{self.section}: the report shows McNemar pairs for {name!r}, which the plan does "
                                f"not declare (mcnemar: true)")

    def __getitem__(self, name: str) -> Comparison:
        name = self.aliases.get(name, name)
        if name not in self.comparisons:
            raise PlanViolation(f"{self.section}: the report renders comparison {name!r}, which the plan's "
                                f"family does not declare")
        return self.comparisons[name]

    def __getattr__(self, name: str) -> Comparison:  # a template's {{ cmp.final }}
        if name.startswith("__") or name in ("comparisons", "aliases", "untestable", "planned"):
            raise AttributeError(name)
        return self[name]


def verdict(c: Comparison) -> str:
    """A comparison's verdict as a word, with the sign of a difference: '+', '-', 'equivalent', 'inconclusive'."""
    if c.beyond:
        return "+" if c.diff > 0 else "-"
    return "equivalent" if c.equivalent else "inconclusive"


def expand(section: str, planned: list[dict[str, Any]], rates: dict[str, str]) -> list[tuple[str, str, str]]:
    """The family's tests as (name, arm a, arm b): each planned comparison, and for one with `shared_rates`
    whose arms' chosen rates differ, the same at each of those rates ('id@lr' of arms 'a@lr', 'b@lr'). Arms
    at different chosen rates compared without `shared_rates` are a PlanViolation."""
    tests = []
    for entry in planned:
        name, a, b = entry["id"], entry["a"], entry["b"]
        tests.append((name, a, b))
        if entry.get("shared_rates") and (a not in rates or b not in rates):
            raise PlanViolation(f"{section}: comparison {name!r} asks for shared rates, but the suite gives no "
                                f"chosen rate for {a if a not in rates else b!r}")
        if a in rates and b in rates and rates[a] != rates[b]:
            if not entry.get("shared_rates"):
                raise PlanViolation(f"{section}: comparison {name!r} compares arms at different rates ({rates[a]} "
                                    f"and {rates[b]}) without shared_rates")
            tests += [(f"{name}@{lr}", f"{a}@{lr}", f"{b}@{lr}") for lr in sorted({rates[a], rates[b]}, key=float)]
    return tests


class Plan:
    """experiments/plan.yaml, read and checked."""

    def __init__(self, path: Path = PLAN):
        self.path = Path(path)
        try:
            data = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"cannot read the plan {self.path}: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict) or not isinstance(data.get("sections"), dict):
            raise UserError(f"the plan {self.path} needs a `sections` mapping")
        self.alpha = float(data.get("alpha", ALPHA))
        self.bound = float(data.get("equivalence_margin", 0.5))
        self.power = float(data.get("power", POWER))
        self.sections: dict[str, dict[str, Any]] = data["sections"]

    def family(self, section: str, arms: dict[str, list[float]], rates: Optional[dict[str, str]] = None) -> Family:
        """The section's family of comparisons over `arms` (arm -> values over seeds; 'arm@lr' for an arm
        run at another arm's rate), `rates` giving each arm's chosen rate."""
        return Family(section, self.comparisons(section), arms, self.bound, self.alpha, rates, self.power)

    def comparisons(self, section: str) -> list[dict[str, Any]]:
        return self.sections.get(section, {}).get("comparisons", [])

    def controls(self, section: str, rates: dict[str, str], run: Callable[[str, str], T]) -> dict[str, T]:
        """The section's shared-rate controls, 'arm@lr' -> run(arm, lr): each arm at another arm's chosen rate,
        as its shared-rate comparisons need (an arm at its own rate is the arm itself)."""
        at = {tuple(arm.rsplit("@", 1)) for _, a, b in expand(section, self.comparisons(section), rates)
              for arm in (a, b) if "@" in arm}
        return {f"{arm}@{lr}": run(arm, lr) for arm, lr in sorted(at) if rates.get(arm) != lr}

    def decision(self, section: str, what: str) -> dict[str, Any]:
        """A decision of the section's (its rule's parameters), refused where it reads a test figure."""
        for d in self.sections.get(section, {}).get("decisions", []):
            if d.get("what") == what:
                if problem := test_read(section, d):
                    raise PlanViolation(problem)
                return d
        raise PlanViolation(f"{section}: the plan declares no decision {what!r}")

    def problems(self) -> list[str]:
        """What the plan itself breaks: a decision reading a test figure, a comparison id or pair given
        twice, a test the plan does not know."""
        found = []
        for section, body in self.sections.items():
            found += [problem for d in body.get("decisions", []) if (problem := test_read(section, d))]
            ids, pairs = set(), set()
            for c in body.get("comparisons", []):
                if c.get("test", "welch") not in TESTS:
                    found.append(f"{section}: comparison {c.get('id')!r} asks for test {c.get('test')!r} "
                                 f"(the plan knows {', '.join(TESTS)})")
                pair = frozenset((c.get("a"), c.get("b")))
                if c.get("id") in ids or pair in pairs:
                    found.append(f"{section}: comparison {c.get('id')!r} is declared twice (the same id or arms)")
                ids.add(c.get("id"))
                pairs.add(pair)
        return found


VALIDATION_FIGURES = ("val_accuracy", "best_val_accuracy")  # what a decision may read (the higher the better)


def test_read(section: str, decision: dict[str, Any]) -> Optional[str]:
    """The problem where a decision's `reads` is anything but a validation figure (a test figure, or one
    unnamed); else None."""
    if decision.get("reads") in VALIDATION_FIGURES:
        return None
    return (f"{section}: the decision {decision.get('what')!r} reads a test figure ({decision.get('reads')}; "
            f"a decision reads one of {', '.join(VALIDATION_FIGURES)})")


@dataclass(frozen=True)
class Version:
    """One committed version of the plan: its commit, date, subject and the file's contents."""

    commit: str
    date: datetime.datetime
    subject: str
    contents: dict[str, Any]


def history(path: Path) -> list[Version]:
    """The plan's committed versions, oldest first ([] outside git or for an untracked file)."""
    found = []
    for line in git(path.parent, "log", "--reverse", "--format=%H%x09%cI%x09%s", "--", path.name).splitlines():
        commit, date, subject = line.split("\t", 2)
        text = git(path.parent, "show", f"{commit}:./{path.name}")
        found.append(Version(commit[:7], datetime.datetime.fromisoformat(date), subject, yaml.safe_load(text) or {}))
    return found


def git(where: Path, *args: str) -> str:
    """A git command's output, run in folder `where` ('' where git or the checkout is missing)."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=where).stdout.strip()
    except OSError:
        return ""


def uncommitted(path: Path) -> bool:
    """Whether a plan git tracks has changes no commit holds (an amendment must be committed to be listed)."""
    return bool(git(path.parent, "ls-files", "--", path.name)) and bool(git(path.parent, "status", "--porcelain",
                                                                            "--", path.name))


def registrations(versions: list[Version], section: str, record_times: list[str]) -> dict[str, Any]:
    """When the section entered the committed plan (`versions`: history()), how many of its records came
    before that (a record's `started` is read as UTC, the clock of the machines that made them), and each
    later commit that changed the section or the plan's settings (an amendment, its subject the reason)."""
    versions = [v for v in versions if section in v.contents.get("sections", {})]
    if not versions:
        return {"registered": None, "before": len(record_times), "records": len(record_times), "amendments": []}
    first = versions[0]
    registered = first.date.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    before = sum(datetime.datetime.fromisoformat(t) < registered for t in record_times)

    def terms(v: Version) -> tuple:
        return v.contents["sections"][section], {k: x for k, x in v.contents.items() if k != "sections"}

    amendments = [v for prev, v in zip(versions, versions[1:]) if terms(v) != terms(prev)]
    return {"registered": first, "before": before, "records": len(record_times),
            "amendments": [(v.commit, v.date.date().isoformat(), v.subject) for v in amendments]}
