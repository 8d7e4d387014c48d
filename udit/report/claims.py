"""The paper's claims (udit/paper/claims.yaml) tested on the reproduction.

A claim is a set of comparisons "row A has a lower metric than row B". Each comparison is made
on the two reproduced numbers. Where both rows ran the same K >= 2 training seeds (`replicates`)
it is paired: the t interval of the K per-seed differences. Otherwise the interval of their
difference combines, in quadrature, both numbers' intervals and, for a number from a single
training run, its assumed training-seed noise (tolerances.PAPER_NOISE, none where none is known).
Two numbers measured with the same stand-in Inception compare with each other (never with the
paper): such an outcome is marked uncalibrated (toy scale).
    holds         the whole interval is on the claimed side of 0
    fails         the whole interval is on the other side
    inconclusive  it contains 0
    pending       a number it needs has no usable reproduction (not run, not in the config,
                  or invalid)
A claim fails when any comparison fails, is pending when none fails and one is pending, holds
when all hold, and is inconclusive otherwise. Claimed sizes ("about 30 FID") are not tested.
"""

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd
import yaml

from udit import experiments as ex
from udit.report import tables, tolerances

CLAIM_STATUSES = ("holds", "fails", "inconclusive", "pending")
LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    metric: str
    lower: tuple[str, str]  # (table, row): the side claimed lower
    higher: tuple[str, str]

    def text(self) -> str:
        label = tables.METRIC_LABELS[self.metric]
        return f"{label} {self.lower[1]} < {self.higher[1]}"


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    comparisons: tuple[Comparison, ...]
    size: str = ""  # a claimed size, shown, not tested
    pending: str = ""  # why it cannot be tested at all


@dataclass(frozen=True)
class Number:
    """One reproduced number and its interval (None where the file has none)."""

    value: float
    low: float | None = None
    high: float | None = None
    node: str = ""
    replicates: dict | None = None  # replicate index -> value, where training seeds ran
    uncalibrated: bool = False  # a stand-in Inception measured it (comparable to its kind only)

    @property
    def seeds(self) -> int:
        return len(self.replicates or {})


@dataclass(frozen=True)
class Outcome:
    status: str
    basis: str


def _comparisons(entry: dict) -> list[Comparison]:
    out = [
        Comparison(c["metric"], tuple(c["pair"][0]), tuple(c["pair"][1]))
        for c in entry.get("lower", [])
    ]
    for chain in entry.get("falling", []):
        rows = chain["rows"]
        out += [
            Comparison(chain["metric"], (chain["table"], after), (chain["table"], before))
            for before, after in itertools.pairwise(rows)
        ]
    return out


@cache
def load() -> tuple[Claim, ...]:
    text = resources.files("udit.paper").joinpath("claims.yaml").read_text()
    return tuple(
        Claim(
            str(cid),
            entry["claim"],
            tuple(_comparisons(entry)),
            size=entry.get("size", ""),
            pending=entry.get("pending", ""),
        )
        for cid, entry in yaml.safe_load(text).items()
    )


def paper_lookup(table: str, row: str, metric: str) -> Number | str:
    """The paper's own number for a claim's row: the claims must hold on the paper."""
    name, _, key = row.partition(" @ ")
    value = ex.paper_row(table=table, row=name, key=key or None).get(metric)
    return "the paper reports no value" if value is None else Number(float(value))


def records_lookup(records: pd.DataFrame) -> Callable[[str, str, str], Number | str]:
    """The reproduced number of (table, row, metric) from the report's records, or why none.
    A row answered by a released checkpoint (T5's DiT-XL/2 @ 7M) is found in its table."""
    # Records of a node by (table, row, metric), in the records' order: the claims look up
    # about 160 of them per render, and a boolean mask over the whole frame each took 10 ms.
    with_node = list(records[records["node"].notna()].itertuples()) if len(records) else []
    positions: dict[tuple, list[int]] = {}
    for i, rec in enumerate(with_node):
        positions.setdefault((rec.table, rec.row, rec.metric), []).append(i)

    def lookup(table: str, row: str, metric: str) -> Number | str:
        released = f"{tables.SOURCE_LABELS.get(table, table)}: {row}"
        found = {
            *positions.get((table, row, metric), ()),
            *positions.get((tables.RELEASED_TABLE.key, released, metric), ()),
        }
        mine = [with_node[i] for i in sorted(found)]
        if not mine:
            return f"{row}: no run of this config answers it"
        for rec in mine:
            usable = rec.status in (*tables.VERDICTS, "uncalibrated")
            if usable and not pd.isna(rec.reproduced):
                low = None if pd.isna(rec.low) else float(rec.low)
                high = None if pd.isna(rec.high) else float(rec.high)
                reps = getattr(rec, "replicates", None)
                replicates = reps if isinstance(reps, dict) and len(reps) >= 2 else None
                uncalibrated = rec.status == "uncalibrated"
                return Number(float(rec.reproduced), low, high, rec.node, replicates, uncalibrated)
        return f"{row}: {mine[0].node} is {mine[0].status}"

    return lookup


def _sides(metric: str, number: Number) -> tuple[float, float]:
    """(below, above): how far one reproduced number may lie below / above its value: each
    side of its interval (never negative, as tolerances.difference_interval) in quadrature
    with its training-seed noise."""
    below = 0.0 if number.low is None else max(number.value - number.low, 0.0)
    above = 0.0 if number.high is None else max(number.high - number.value, 0.0)
    if number.seeds >= 2:  # its interval is over training seeds: the noise is measured
        return below, above
    seed = tolerances.paper_half_width(metric, number.value, LEVEL)
    return math.hypot(below, seed), math.hypot(above, seed)


def paired(comparison: Comparison, lower: Number, higher: Number) -> Outcome | None:
    """Replicate k of one row against replicate k of the other (the same training seed offset),
    where both rows ran the same K >= 2 seeds: the t interval of the K differences."""
    shared = sorted(set(lower.replicates or {}) & set(higher.replicates or {}))
    if len(shared) < 2:
        return None
    diffs = [lower.replicates[k] - higher.replicates[k] for k in shared]
    spread = tolerances.seeds_interval(diffs, LEVEL)
    mean = sum(diffs) / len(diffs)
    return _decide(
        comparison, lower, higher, mean, spread["low"], spread["high"],
        how=f"paired over {len(shared)} training seeds",
    )  # fmt: skip


def compare(comparison: Comparison, lower: Number, higher: Number) -> Outcome:
    """Whether the reproduction has `lower` below `higher` (see the module docstring)."""
    by_seed = paired(comparison, lower, higher)
    if by_seed is not None:
        return by_seed
    below_a, above_a = _sides(comparison.metric, lower)
    below_b, above_b = _sides(comparison.metric, higher)
    diff = lower.value - higher.value
    low, high = diff - math.hypot(below_a, above_b), diff + math.hypot(above_a, below_b)
    return _decide(comparison, lower, higher, diff, low, high, how="")


def _decide(comparison, lower: Number, higher: Number, diff, low, high, *, how: str) -> Outcome:
    if lower.uncalibrated != higher.uncalibrated:  # two Inception networks: not comparable
        return Outcome(
            "pending", f"{comparison.text()}: one side is uncalibrated (stand-in Inception)"
        )
    if lower.uncalibrated:
        how = ", ".join(filter(None, [how, "uncalibrated: stand-in Inception, toy scale"]))
    if high < 0:
        status = "holds"
    elif low > 0 or low == high == 0:  # equal deterministic counts: not lower
        status = "fails"
    else:
        status = "inconclusive"
    basis = (
        f"{comparison.text()}: {lower.value:.4g} vs {higher.value:.4g}, difference "
        f"{diff:+.3g} in [{low:+.3g}, {high:+.3g}] at {LEVEL:.0%}"
        + (f" ({how})" if how else "")
        + f": {status}"
    )
    return Outcome(status, basis)


def evaluate(claim: Claim, lookup: Callable[[str, str, str], Number | str]) -> Outcome:
    """The claim's status, resting on the comparisons that decide it (see the docstring)."""
    if claim.pending:
        return Outcome("pending", claim.pending)
    outcomes = [_outcome(comparison, lookup) for comparison in claim.comparisons]
    statuses = {o.status for o in outcomes}
    status = next(s for s in ("fails", "pending", "inconclusive", "holds") if s in statuses)
    # each reason once: many comparisons wait for the same run
    deciding = dict.fromkeys(
        part for o in outcomes if o.status == status for part in o.basis.split(" | ")
    )
    return Outcome(status, " | ".join(deciding))


def details(claim: Claim, lookup: Callable[[str, str, str], Number | str]) -> list[str]:
    """Every comparison of a claim and its outcome, in the order of claims.yaml."""
    out = []
    for comparison in claim.comparisons:
        outcome = _outcome(comparison, lookup)
        pending = outcome.status == "pending"  # its reasons do not name the comparison
        out.append(f"{comparison.text()}: {outcome.basis}" if pending else outcome.basis)
    return out


def _outcome(comparison: Comparison, lookup) -> Outcome:
    a = lookup(*comparison.lower, comparison.metric)
    b = lookup(*comparison.higher, comparison.metric)
    missing = [side for side in (a, b) if isinstance(side, str)]
    if missing:
        return Outcome("pending", " | ".join(missing))
    return compare(comparison, a, b)


def claim_lines(records: pd.DataFrame) -> list[dict]:
    """Template rows of the claims table, one per claim of claims.yaml."""
    lookup = records_lookup(records)
    lines = []
    for claim in load():
        outcome = evaluate(claim, lookup)
        lines.append(
            {
                "id": claim.id,
                "claim": claim.text,
                "size": claim.size,
                "status": outcome.status,
                "basis": outcome.basis,
                "details": details(claim, lookup) if len(claim.comparisons) > 1 else [],
            }
        )
    return lines
