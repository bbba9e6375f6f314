"""The table `arzani bench` prints, and how it judges a figure against its target.

A figure measured once on a shared 2-core machine tells little: the same code read 0.69x, 0.89x
and 0.95x of its baseline in three runs. So a timed figure is measured in rounds, ours and the
baseline's interleaved (their order alternating from one round to the next, so that neither is
always the one measured on a warmer or a busier machine), a ratio per round; the table shows the
median of those ratios and their spread, and judges the median against the target. The spread is
the interquartile range (the middle half of the rounds, q1..q3): one round that met a neighbour's
burst moves neither the median nor it, while rounds that scatter as a whole still widen it.

    PASS / MISS   the median meets / misses the target and the spread is within the gap;
    UNSURE        the spread (q3 - q1) is larger than the gap between the median and the
                  target: another run could fall on either side, so this one decides nothing.

    spread:   |<---- q1..q3 ---->|
    target:                 |            -> the gap is smaller than the spread: UNSURE
    target:                                         |   -> the gap is larger: PASS or MISS

A count (round trips, bytes, agent calls) is exact: no spread, PASS or MISS. A target "exactly N"
is met only if every round gave N.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import click

UNSURE = "UNSURE: spread exceeds gap to target"

_TARGET = re.compile(r"\s*(<=|>=|exactly)\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*(x?)(?![0-9A-Za-z])")


@dataclass(frozen=True)
class Target:
    """A bound on a figure: `<= 5 ms`, `>= 0.9x` (on the ratio to the baseline), `exactly 1.00`.
    Whatever follows the number is a note for the reader (`<= 2x the 10k figure`)."""

    op: str  # "<=", ">=" or "=="
    bound: float
    of_ratio: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Target | None:
        """None for a target that is no bound (an empty one, or words alone)."""
        match = _TARGET.match(text or "")
        if not match:
            return None
        op, number, x = match.groups()
        return cls("==" if op == "exactly" else op, float(number.replace(",", "")), bool(x), text)

    def met_by(self, figure: float) -> bool:
        if self.op == "<=":
            return figure <= self.bound
        if self.op == ">=":
            return figure >= self.bound
        return abs(figure - self.bound) < 1e-9


def judge(target: Target, median: float, spread: tuple[float, float] | None = None) -> str:
    """PASS, MISS or UNSURE for `median` (of the rounds; the figure itself if exact), `spread` being
    the rounds' spread of the same quantity (`spread_of`: q1..q3, or min..max for "exactly N"),
    or None for an exact figure."""
    if target.op == "==":
        exact = spread is None or spread[0] == spread[1]
        return "PASS" if exact and target.met_by(median) else "MISS"
    if spread is not None and spread[1] - spread[0] > abs(median - target.bound):
        return UNSURE
    return "PASS" if target.met_by(median) else "MISS"


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    baseline: str
    ratio: str
    spread: str
    target: str
    verdict: str


def spread_of(values: Sequence[float], target: Target | None) -> tuple[float, float]:
    """The rounds' spread: (q1, q3) (Python's inclusive quartiles: with 5 rounds, the 2nd and 4th),
    or (min, max) for an "exactly N" target, which every round must meet."""
    if target is not None and target.op == "==":
        return (min(values), max(values))
    if len(values) < 2:
        return (values[0], values[0])
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q1, q3)


def _number(value: float) -> str:
    return f"{value:,.2f}" if abs(value) >= 10_000 else f"{value:.2f}"


class Figures:
    """The rows of the table, each with its target and verdict when it has a target."""

    HEADER = Row("figure", "value", "baseline", "ratio", "spread (rounds)", "target", "verdict")

    def __init__(self):
        self.rows: list[Row] = []

    def add(self, name: str, value: float, baseline: float | None, unit: str, target: str = "", *,
            spread: tuple[float, float] | None = None, rounds: int = 0, ratio: float | None = None,
            verdict: str | None = None) -> None:
        """One figure. `value` (and `baseline`) once, or the medians of `rounds` rounds, then
        `ratio` is the median of the rounds' ratios and `spread` the rounds' (q1, q3) of the
        quantity the target bounds (the ratio for an `x` target, else the value). `verdict`
        overrides the judgement (a figure that follows from another one's)."""
        if ratio is None and baseline:
            ratio = value / baseline
        parsed = Target.parse(target)
        if verdict is None:
            if parsed is None:
                verdict = "-"
            elif parsed.of_ratio and ratio is None:
                raise ValueError(f"{name}: a ratio target needs a baseline")
            else:
                verdict = judge(parsed, ratio if parsed.of_ratio else value, spread)
        shown_spread = "-"
        if spread is not None:
            spread_of_ratio = parsed.of_ratio if parsed is not None else ratio is not None
            suffix = "x" if spread_of_ratio else f" {unit}"
            shown_spread = f"{_number(spread[0])}..{_number(spread[1])}{suffix} ({rounds})"
        self.rows.append(Row(name, f"{_number(value)} {unit}",
                             f"{_number(baseline)} {unit}" if baseline is not None else "-",
                             f"{ratio:.2f}x" if ratio is not None else "-", shown_spread, target or "-", verdict))

    def add_rounds(self, name: str, ours: Sequence[float], baseline: Sequence[float] | None, unit: str,
                   target: str = "", *, verdict: str | None = None) -> str:
        """A figure measured in rounds: ours[i] beside baseline[i] (measured in the same round).
        Returns the verdict."""
        value = statistics.median(ours)
        if baseline is None:
            self.add(name, value, None, unit, target, spread=spread_of(ours, Target.parse(target)), rounds=len(ours),
                     verdict=verdict)
            return self.rows[-1].verdict
        if len(baseline) != len(ours):
            raise ValueError(f"{name}: {len(ours)} rounds of ours, {len(baseline)} of the baseline")
        ratios = [o / b for o, b in zip(ours, baseline, strict=True)]
        parsed = Target.parse(target)
        judged = ratios if parsed is None or parsed.of_ratio else list(ours)
        self.add(name, value, statistics.median(baseline), unit, target, spread=spread_of(judged, parsed),
                 rounds=len(ours), ratio=statistics.median(ratios), verdict=verdict)
        return self.rows[-1].verdict

    def verdicts(self) -> dict[str, str]:
        return {row.name: row.verdict for row in self.rows if row.target != "-"}

    def print(self) -> None:
        table = [self.HEADER, *self.rows]
        widths = [max(len(row[i]) for row in map(_cells, table)) for i in range(len(_cells(self.HEADER)))]
        for row in table:
            click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(_cells(row))).rstrip())


def _cells(row: Row) -> tuple[str, ...]:
    return (row.name, row.value, row.baseline, row.ratio, row.spread, row.target, row.verdict)
